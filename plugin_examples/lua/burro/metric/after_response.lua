-- After the response was sent: count it for its host.
count_request(ctx.req.host)
