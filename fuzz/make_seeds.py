#!/usr/bin/env python3
"""Writes fuzz/seeds/<target>/ from the cases of tests/framing.rs and the unit tests in src/http/*.rs.

Each seed is the raw bytes a peer would send (the targets derive cut points and limits from a hash of the input).
Re-run after editing: `python3 fuzz/make_seeds.py` (it rewrites the four folders).
"""

import os
import shutil

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "seeds")

H = b"Host: alpha.test\r\n"

REQUEST_HEAD = {
    # valid
    "get_absolute": b"GET http://example.com/a?b=1 HTTP/1.1\r\nHost: example.com\r\nUser-Agent: t/1\r\n"
    b"Accept: */*\r\nProxy-Connection: keep-alive\r\n\r\n",
    "get_origin_http10": b"GET / HTTP/1.0\r\nA: 1\r\nB: 2\r\n\r\n",
    "post_content_length": b"POST / HTTP/1.1\r\nContent-Length: 3\r\n\r\nabcGET",
    "post_chunked_trailer": b"POST http://alpha.test/b HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n"
    b"3\r\nabc\r\n4;ext=1\r\ndefg\r\n0\r\nX-Trailer: t\r\n\r\n",
    "pipelined": b"POST http://alpha.test/a HTTP/1.1\r\n" + H + b"Content-Length: 5\r\n\r\nhello"
    b"PUT http://alpha.test/d HTTP/1.1\r\n" + H + b"Content-Length: 39\r\n\r\n"
    b"GET http://alpha.test/smuggled HTTP/1.1GET http://alpha.test/e HTTP/1.1\r\n" + H + b"\r\n",
    "leading_crlf": b"\r\n\r\nGET / HTTP/1.1\r\n\r\nx",
    "connect_http10": b"CONNECT alpha.test:443 HTTP/1.0\r\n\r\n",
    "connect_ipv6": b"CONNECT [::1]:8443 HTTP/1.1\r\nHost: [::1]:8443\r\n\r\n",
    "options_asterisk": b"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n",
    "ipv6_absolute": b"GET http://[2001:DB8::1]:81/x HTTP/1.1\r\nHost: [::1]:8080\r\n\r\n",
    "expect_continue": b"POST http://alpha.test/upload HTTP/1.1\r\n" + H + b"Expect: 100-continue\r\n"
    b"Content-Length: 4\r\n\r\nbody",
    "upgrade": b"GET http://alpha.test/ws HTTP/1.1\r\n" + H + b"Connection: Upgrade, keep-alive\r\n"
    b"Upgrade: websocket\r\n\r\n",
    "connection_close": b"GET http://alpha.test/ HTTP/1.1\r\n" + H + b"Connection: close\r\n\r\n",
    "empty_and_obs_text_values": b"GET / HTTP/1.1\r\nA:\r\nB:   \r\nC: caf\xe9\r\nD: v \t\r\n\r\n",
    "partial_trailing_cr": b"GET / HTTP/1.1\r\nHost: a\r",
    "te_gzip_chunked": b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip,chunked\r\n\r\n0\r\n\r\n",
    "cl_leading_zeros": b"POST / HTTP/1.1\r\nContent-Length: 0005\r\n\r\nhello",
    "edit_bytes_after_head": b"GET http://a/ HTTP/1.1\r\n\r\n\x05X-Bad\x01va\r\nlue\x7f\r",
    # malformed
    "http10_te": b"POST http://alpha.test/ HTTP/1.0\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    "te_and_cl": b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n",
    "te_trailing_tab": b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\t\r\n\r\n",
    "te_chunked_not_last": b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
    "cl_signed": b"POST / HTTP/1.1\r\nContent-Length: +5\r\n\r\nhello",
    "cl_list": b"POST / HTTP/1.1\r\nContent-Length: 2, 2\r\n\r\nok",
    "cl_twice": b"POST / HTTP/1.1\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nok",
    "cl_overflow": b"POST / HTTP/1.1\r\nContent-Length: 99999999999999999999999\r\n\r\n",
    "duplicate_host": b"GET / HTTP/1.1\r\nHost: a\r\nhost: a\r\n\r\n",
    "host_bad_byte": b"GET / HTTP/1.1\r\nHost: a@b\r\n\r\n",
    "bare_lf": b"GET / HTTP/1.1\nHost: a\n\n",
    "bare_cr": b"GET / HTTP/1.1\r\nA: b\rc\r\n\r\n",
    "obs_fold": b"GET / HTTP/1.1\r\nA: b\r\n folded\r\n\r\n",
    "nul_in_value": b"GET / HTTP/1.1\r\nA: a\x00b\r\n\r\n",
    "space_before_colon": b"GET / HTTP/1.1\r\nContent-Length : 2\r\n\r\nok",
    "version_1_2": b"GET / HTTP/1.2\r\n\r\n",
    "version_lowercase": b"GET / http/1.1\r\n\r\n",
    "target_obs_text": b"GET /\xc3\xa9 HTTP/1.1\r\n\r\n",
    "double_space": b"GET  / HTTP/1.1\r\n\r\n",
    "no_version": b"GET /\r\n\r\n",
}

RESPONSE_HEAD = {
    # valid
    "ok_content_length": b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
    "not_found_next": b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\nnext",
    "chunked_trailer": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"4\r\nWiki\r\n5;name=val\r\npedia\r\n0\r\nExpires: never\r\n\r\n",
    "chunked_gzip_until_close": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\n\x1f\x8bnot really gzip",
    "gzip_until_close": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nabc",
    "no_framing_http10": b"HTTP/1.0 200 D\xe9j\xe0 vu\r\nConnection: keep-alive\r\n\r\nbody",
    "empty_reason": b"HTTP/1.1 200\r\n\r\n",
    "reason_space": b"HTTP/1.1 200 \r\nA: b\r\n\r\n",
    "status_999": b"HTTP/1.1 999 Odd\r\n\r\n",
    "continue_100": b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
    "switching_101": b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n"
    b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nPOISON",
    "no_content_204": b"HTTP/1.1 204 No Content\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nPOISON",
    "not_modified_304_cl": b"HTTP/1.1 304 Not Modified\r\nContent-Length: 44\r\n\r\n",
    "connect_established": b"HTTP/1.1 200 Connection established\r\n\r\n",
    "hop_by_hop": b"HTTP/1.1 200 OK\r\nConnection: keep-alive, X-A\r\nKeep-Alive: timeout=5\r\nX-A: 1\r\n"
    b"Content-Length: 0\r\n\r\n\x03Via\x00\x01v\r\n",
    "proxy_status": b"HTTP/1.1 502 Bad Gateway\r\nContent-Type: text/plain; charset=utf-8\r\n"
    b"Proxy-Status: proxy; error=dns_error; details=\"x\"\r\nContent-Length: 27\r\nConnection: close\r\n\r\n"
    b"502 Bad Gateway: dns_error\n",
    # malformed
    "cl_twice_equal": b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nok",
    "cl_twice_different": b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 6\r\n\r\nokPOISON",
    "cl_list": b"HTTP/1.1 200 OK\r\nContent-Length: 2, 2\r\n\r\nok",
    "cl_signed": b"HTTP/1.1 200 OK\r\nContent-Length: +2\r\n\r\nok",
    "cl_negative": b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\nok",
    "cl_empty": b"HTTP/1.1 200 OK\r\nContent-Length: \r\n\r\nok",
    "cl_hex": b"HTTP/1.1 200 OK\r\nContent-Length: 0x2\r\n\r\nok",
    "cl_huge": b"HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999999\r\n\r\nok",
    "te_trailing_comma": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked,\r\n\r\n2\r\nok\r\n0\r\n\r\n",
    "te_leading_comma": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: ,chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
    "te_twice": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
    "te_unknown": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: x-smuggle, chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
    "te_chunked_twice": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
    "te_http10": b"HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
    "te_and_cl": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 2\r\n\r\n",
    "obs_fold": b"HTTP/1.1 200 OK\r\nX-A: a\r\n folded\r\nContent-Length: 2\r\n\r\nok",
    "bare_lf_field": b"HTTP/1.1 200 OK\r\nX-A: a\nX-B: b\r\nContent-Length: 2\r\n\r\nok",
    "bare_lf_throughout": b"HTTP/1.1 200 OK\nContent-Length: 2\n\nok",
    "nul_in_value": b"HTTP/1.1 200 OK\r\nX-A: a\x00b\r\nContent-Length: 2\r\n\r\nok",
    "bare_cr_in_value": b"HTTP/1.1 200 OK\r\nX-A: a\rb\r\nContent-Length: 2\r\n\r\nok",
    "space_before_colon": b"HTTP/1.1 200 OK\r\nContent-Length : 2\r\n\r\nok",
    "status_099": b"HTTP/1.1 099 X\r\n\r\n",
    "status_2000": b"HTTP/1.1 2000 X\r\n\r\n",
    "leading_crlf": b"\r\nHTTP/1.1 200 OK\r\n\r\n",
    "http2": b"HTTP/2.0 200 OK\r\n\r\n",
}

CHUNKED = {
    # valid
    "wikipedia": b"4\r\nWiki\r\n5;name=val;q=\"a b\"\r\npedia\r\nE\r\n in\r\n\r\nchunks.\r\n10 ;x\r\n"
    b"0123456789abcdef\r\n0\r\nExpires: never\r\nX-T: 1\r\n\r\nNEXT",
    "last_chunk_only": b"0\r\n\r\nGET",
    "ext_and_trailer": b"3\r\nabc\r\n4;ext=1\r\ndefg\r\n0\r\nX-Trailer: t\r\n\r\n",
    "bws_before_ext": b"1 ; a\r\nA\r\n0\r\n\r\n",
    "quoted_ext": b"1;a=b;c=\"d;e\"\r\nA\r\n0\r\n\r\n",
    "sixteen_digits": b"0000000000000001\r\nA\r\n0\r\n\r\n",
    "max_size": b"FFFFFFFFFFFFFFFF\r\nabc",
    "empty_trailer_value": b"0\r\nA: b\r\nC:\r\n\r\n",
    "partial": b"5\r\nhel",
    "hello": b"5\r\nhello\r\n0\r\n\r\n",
    # malformed
    "minus_5": b"-5\r\nhello\r\n0\r\n\r\n",
    "plus_a": b"+a\r\n",
    "hex_prefix_0x10": b"0x10\r\n0123456789abcdef\r\n0\r\n\r\n",
    "leading_space": b" 1\r\nA\r\n0\r\n\r\n",
    "not_hex": b"zz\r\nworld\r\n0\r\n\r\n",
    "trailing_space_no_ext": b"1 \r\nA\r\n0\r\n\r\n",
    "seventeen_digits": b"00000000000000001\r\nA\r\n0\r\n\r\n",
    "over_16_hex_digits": b"10000000000000000\r\n",
    "empty_size": b"\r\n",
    "bare_lf_size": b"1\nA\r\n0\r\n\r\n",
    "bare_lf_data": b"1\r\nA\n0\r\n\r\n",
    "bare_lf_last": b"1\r\nA\r\n0\n\r\n",
    "bare_lf_end": b"1\r\nA\r\n0\r\n\n",
    "bare_cr_size": b"1\rA\r\n0\r\n\r\n",
    "data_too_long": b"5\r\nhello\r\n3\r\nabcX\r\n0\r\n\r\n",
    "no_crlf_after_data": b"1\r\nA0\r\n\r\n",
    "ext_bare_cr": b"1;a\rb\r\nA\r\n0\r\n\r\n",
    "ext_bare_lf": b"1;a\nb\r\nA\r\n0\r\n\r\n",
    "ext_nul": b"1;a\x00b\r\nA\r\n0\r\n\r\n",
    "trailer_space_before_colon": b"0\r\nA : b\r\n\r\n",
    "trailer_obs_fold": b"0\r\nA: b\r\n c\r\n\r\n",
    "trailer_empty_name": b"0\r\n: b\r\n\r\n",
    "trailer_bad_name": b"0\r\nA(b: c\r\n\r\n",
    "trailer_nul": b"0\r\nA: b\x00\r\n\r\n",
    "trailer_bare_cr": b"0\r\nA: b\rc\r\n\r\n",
    "trailer_no_colon": b"0\r\nAb\r\n\r\n",
    "final_bare_cr": b"0\r\n\rX",
    "long_ext": b"1;" + b"x" * 40 + b"\r\nA\r\n0\r\n\r\n",
    "many_trailers": b"0\r\n" + b"X-A: 123456\r\n" * 6 + b"\r\n",
}

TARGET = {
    "origin": b"/a/b?c=d",
    "asterisk": b"*",
    "fragment": b"/a#frag",
    "absolute_mixed_case": b"http://Example.COM/a?b",
    "https_no_path": b"HTTPS://example.com",
    "port": b"http://example.com:8080",
    "query_no_path": b"http://example.com?q=1",
    "ipv6_port": b"http://[::1]:81/x",
    "ipv6_upper": b"http://[2001:DB8::1]/",
    "ipv4_mapped": b"http://[::ffff:1.2.3.4]/",
    "ipv4": b"http://10.0.0.1:80/",
    "pct_host": b"http://a%2Db/",
    "authority": b"example.com:443",
    "authority_ipv6": b"[::1]:8443",
    "authority_no_port": b"example.com",
    "userinfo": b"http://user:pw@example.com/",
    "empty_host": b"http:///x",
    "empty_port": b"http://example.com:/",
    "port_zero": b"http://example.com:0/",
    "port_65536": b"http://example.com:65536/",
    "port_huge": b"http://example.com:99999999999999999999/",
    "port_minus": b"http://example.com:-1/",
    "ipv6_unclosed": b"http://[::1/",
    "ipv6_zone": b"http://[fe80::1%25eth0]/",
    "ipv6_junk_after": b"http://[::1]x/",
    "ipv6_unbracketed": b"http://::1/",
    "space_in_host": b"http://exa mple.com/",
    "bad_pct": b"http://exa%zzmple.com/",
    "short_pct": b"http://exa%2/",
    "nul_in_host": b"http://exa\x00mple.com/",
    "one_slash": b"http:/example.com/",
    "ftp": b"ftp://example.com/",
    "bad_scheme": b"1ftp://example.com/",
    "sub_delims_host": b"http://a!$&'()*+,;=b.test/",
}


def main():
    for target, cases in [
        ("request_head", REQUEST_HEAD),
        ("response_head", RESPONSE_HEAD),
        ("chunked", CHUNKED),
        ("request_target", TARGET),
    ]:
        folder = os.path.join(ROOT, target)
        shutil.rmtree(folder, ignore_errors=True)
        os.makedirs(folder)
        for name, data in cases.items():
            with open(os.path.join(folder, name), "wb") as f:
                f.write(data)
        print(f"{target}: {len(cases)} seeds")


if __name__ == "__main__":
    main()
