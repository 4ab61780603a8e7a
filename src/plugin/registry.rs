//! The built-in plugins by name, and the chain of factories a `Config` asks for.
//!
//! Order (as proxy.py's `get_default_plugins` + auth + `--plugins`): basic auth when
//! `--basic-auth` is given, the PAC file when `--pac-file` is given, then every
//! `--plugins` name in command-line order. A name is proxy.py's dotted name
//! (`proxy.plugin.FilterByUpstreamHostPlugin`), its defining module's full path
//! (`proxy.plugin.filter_by_upstream.FilterByUpstreamHostPlugin`) or the short class name
//! (`FilterByUpstreamHostPlugin`). A plugin named twice (or named after being enabled by
//! its own flag) is loaded once, at its first place, as proxy.py does. Naming
//! `AuthPlugin` or `HttpWebServerPacFilePlugin` without `--basic-auth`/`--pac-file`
//! loads nothing (they would have nothing to do, as in proxy.py).
//!
//! A name ending in `.lua` is a Lua script, loaded where it stands; `--script` files
//! follow every `--plugins` name.
//!
//! Unlike proxy.py (a Python traceback and exit 1), an unknown name is an error listing
//! the valid names.

use std::path::Path;
use std::sync::Arc;

use crate::config::Config;

use super::basic_auth::{self, BasicAuthFactory};
use super::body_rewrite::{self, ModifyChunkResponseFactory, ModifyPostDataFactory};
use super::cache::{self, CacheResponsesFactory};
use super::dns_resolver::{self, CustomDnsResolverFactory};
use super::filters::{
    self, FilterByClientIpFactory, FilterByUpstreamHostFactory, FilterByUrlRegexFactory,
};
use super::lua::{self, LuaFactory};
use super::mock;
use super::pac::{self, PacFileFactory};
use super::program_name::{self, ProgramNameFactory};
use super::rewrite::{
    self, ModifyRequestHeaderFactory, RedirectToCustomServerFactory, ShortLinkFactory,
};
use super::web_route::{self, WebServerFactory};
use super::PluginFactory;

/// The dotted names of every built-in plugin, as `--plugins` accepts them.
pub const BUILTIN: &[&str] = &[
    filters::UPSTREAM_HOST_NAME,
    filters::CLIENT_IP_NAME,
    filters::URL_REGEX_NAME,
    rewrite::SHORT_LINK_NAME,
    rewrite::REDIRECT_NAME,
    rewrite::MODIFY_REQUEST_HEADER_NAME,
    mock::REST_API_NAME,
    mock::MITM_NAME,
    cache::NAME,
    body_rewrite::MODIFY_CHUNK_RESPONSE_NAME,
    body_rewrite::MODIFY_POST_DATA_NAME,
    program_name::NAME,
    dns_resolver::NAME,
    web_route::NAME,
    basic_auth::NAME,
    pac::NAME,
];

/// The defining module of each built-in (proxy.py also accepts the full path).
const MODULES: &[(&str, &str)] = &[
    (
        filters::UPSTREAM_HOST_NAME,
        "proxy.plugin.filter_by_upstream.FilterByUpstreamHostPlugin",
    ),
    (
        filters::CLIENT_IP_NAME,
        "proxy.plugin.filter_by_client_ip.FilterByClientIpPlugin",
    ),
    (
        filters::URL_REGEX_NAME,
        "proxy.plugin.filter_by_url_regex.FilterByURLRegexPlugin",
    ),
    (
        rewrite::SHORT_LINK_NAME,
        "proxy.plugin.shortlink.ShortLinkPlugin",
    ),
    (
        rewrite::REDIRECT_NAME,
        "proxy.plugin.redirect_to_custom_server.RedirectToCustomServerPlugin",
    ),
    (
        rewrite::MODIFY_REQUEST_HEADER_NAME,
        "proxy.plugin.modify_request_header.ModifyRequestHeaderPlugin",
    ),
    (
        program_name::NAME,
        "proxy.plugin.program_name.ProgramNamePlugin",
    ),
    (
        body_rewrite::MODIFY_POST_DATA_NAME,
        "proxy.plugin.modify_post_data.ModifyPostDataPlugin",
    ),
    (
        body_rewrite::MODIFY_CHUNK_RESPONSE_NAME,
        "proxy.plugin.modify_chunk_response.ModifyChunkResponsePlugin",
    ),
    (
        mock::REST_API_NAME,
        "proxy.plugin.mock_rest_api.ProposedRestApiPlugin",
    ),
    (
        mock::MITM_NAME,
        "proxy.plugin.man_in_the_middle.ManInTheMiddlePlugin",
    ),
    (dns_resolver::NAME, dns_resolver::MODULE_NAME),
    (cache::NAME, cache::MODULE_NAME),
    (web_route::NAME, web_route::MODULE_NAME),
    (
        pac::NAME,
        "proxy.http.server.pac_plugin.HttpWebServerPacFilePlugin",
    ),
];

/// The valid `--plugins` names, comma-separated, for error messages and help.
pub fn valid_names() -> String {
    BUILTIN.join(", ")
}

/// The dotted name `name` stands for, if it is a built-in.
pub fn resolve(name: &str) -> Option<&'static str> {
    let name = name.trim();
    BUILTIN.iter().copied().find(|&dotted| {
        dotted == name
            || short_name(dotted) == name
            || MODULES.iter().any(|&(d, full)| d == dotted && full == name)
    })
}

/// `proxy.plugin.ShortLinkPlugin` → `ShortLinkPlugin`.
fn short_name(dotted: &str) -> &str {
    dotted.rsplit('.').next().unwrap_or(dotted)
}

/// The factories for `config`, in chain order (see the module documentation).
///
/// # Errors
/// `unknown plugin 'X'; valid plugins: a, b, c` for a name that is not a built-in.
pub fn factories(config: &Config) -> Result<Vec<Arc<dyn PluginFactory>>, String> {
    let mut loaded: Vec<&'static str> = Vec::new();
    let mut out: Vec<Arc<dyn PluginFactory>> = Vec::new();

    if !config.basic_auth.is_empty() {
        loaded.push(basic_auth::NAME);
        out.push(Arc::new(BasicAuthFactory::new(config)));
    }
    if let Some(factory) = PacFileFactory::new(config) {
        loaded.push(pac::NAME);
        out.push(Arc::new(factory));
    }
    // What scripts share, made when the first one loads.
    let mut env: Option<Arc<lua::Env>> = None;
    let mut env_for = |config: &Config| -> Result<Arc<lua::Env>, String> {
        if let Some(env) = &env {
            return Ok(Arc::clone(env));
        }
        let made = lua::Env::new(config)?;
        env = Some(Arc::clone(&made));
        Ok(made)
    };
    for name in &config.plugins {
        if resolve(name).is_none() && lua::is_script(name) {
            let env = env_for(config)?;
            out.push(Arc::new(LuaFactory::load(Path::new(name), config, &env)?));
            continue;
        }
        let Some(dotted) = resolve(name) else {
            return Err(format!(
                "unknown plugin '{name}'; valid plugins: {}",
                valid_names()
            ));
        };
        if loaded.contains(&dotted) {
            continue;
        }
        loaded.push(dotted);
        let factory: Arc<dyn PluginFactory> = match dotted {
            filters::UPSTREAM_HOST_NAME => Arc::new(FilterByUpstreamHostFactory::new(config)),
            filters::CLIENT_IP_NAME => Arc::new(FilterByClientIpFactory::new(config)),
            filters::URL_REGEX_NAME => Arc::new(FilterByUrlRegexFactory::new(config)?),
            rewrite::SHORT_LINK_NAME => Arc::new(ShortLinkFactory),
            rewrite::REDIRECT_NAME => Arc::new(RedirectToCustomServerFactory),
            rewrite::MODIFY_REQUEST_HEADER_NAME => Arc::new(ModifyRequestHeaderFactory),
            body_rewrite::MODIFY_CHUNK_RESPONSE_NAME => Arc::new(ModifyChunkResponseFactory),
            body_rewrite::MODIFY_POST_DATA_NAME => Arc::new(ModifyPostDataFactory),
            program_name::NAME => Arc::new(ProgramNameFactory),
            dns_resolver::NAME => Arc::new(CustomDnsResolverFactory),
            cache::NAME => Arc::new(CacheResponsesFactory::new(config)?),
            mock::REST_API_NAME | mock::MITM_NAME => match mock::factory(dotted) {
                Some(Ok(factory)) => factory,
                Some(Err(e)) => return Err(format!("{dotted}: {e}")),
                None => continue,
            },
            // Answers only with --enable-web-server (checked per request, as proxy.py).
            web_route::NAME => Arc::new(WebServerFactory),
            // AuthPlugin / PAC without their flags: nothing to do.
            _ => continue,
        };
        out.push(factory);
    }
    for path in &config.scripts {
        let env = env_for(config)?;
        out.push(Arc::new(LuaFactory::load(path, config, &env)?));
    }
    // A `--set` for a script that is not loaded is a typo, not a no-op.
    for (script, option, _) in &config.script_settings {
        let loaded = config
            .plugins
            .iter()
            .filter(|name| lua::is_script(name))
            .map(|name| lua::script_name(Path::new(name)))
            .chain(config.scripts.iter().map(|p| lua::script_name(p)))
            .any(|name| name == *script);
        if !loaded {
            return Err(format!(
                "--set {script}.{option}: no loaded script is named {script:?}"
            ));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn names(config: &Config) -> Vec<&'static str> {
        factories(config)
            .unwrap()
            .iter()
            .map(|f| f.name())
            .collect()
    }

    fn with_plugins(plugins: &[&str]) -> Config {
        Config {
            plugins: plugins.iter().map(|s| s.to_string()).collect(),
            ..Config::default()
        }
    }

    #[test]
    fn no_flags_no_plugins() {
        assert!(factories(&Config::default()).unwrap().is_empty());
    }

    #[test]
    fn auth_first_then_pac_then_plugins_in_order() {
        let config = Config {
            basic_auth: vec!["u:p".to_owned()],
            pac_file: Some(b"function FindProxyForURL(u, h) { return \"DIRECT\"; }".to_vec()),
            ..with_plugins(&[
                "proxy.plugin.ShortLinkPlugin",
                "proxy.plugin.FilterByUpstreamHostPlugin",
                "ModifyRequestHeaderPlugin",
            ])
        };
        assert_eq!(
            names(&config),
            vec![
                "proxy.http.proxy.auth.AuthPlugin",
                "proxy.http.server.HttpWebServerPacFilePlugin",
                "proxy.plugin.ShortLinkPlugin",
                "proxy.plugin.FilterByUpstreamHostPlugin",
                "proxy.plugin.ModifyRequestHeaderPlugin",
            ]
        );
    }

    #[test]
    fn short_dotted_and_module_names_resolve() {
        for name in BUILTIN {
            assert_eq!(resolve(name), Some(*name));
            assert_eq!(resolve(short_name(name)), Some(*name));
        }
        assert_eq!(
            resolve("proxy.plugin.filter_by_client_ip.FilterByClientIpPlugin"),
            Some("proxy.plugin.FilterByClientIpPlugin")
        );
        assert_eq!(
            resolve("RedirectToCustomServerPlugin"),
            Some(rewrite::REDIRECT_NAME)
        );
        assert_eq!(resolve("shortlinkplugin"), None, "names are case-sensitive");
        assert_eq!(resolve("foo.ShortLinkPlugin"), None);
        assert_eq!(resolve("proxy.plugin"), None);
        assert_eq!(resolve(""), None);
    }

    #[test]
    fn duplicates_are_dropped() {
        let config = Config {
            basic_auth: vec!["u:p".to_owned()],
            ..with_plugins(&[
                "FilterByClientIpPlugin",
                "proxy.plugin.FilterByClientIpPlugin",
                "proxy.http.proxy.auth.AuthPlugin",
                "ShortLinkPlugin",
                "FilterByClientIpPlugin",
            ])
        };
        assert_eq!(
            names(&config),
            vec![
                "proxy.http.proxy.auth.AuthPlugin",
                "proxy.plugin.FilterByClientIpPlugin",
                "proxy.plugin.ShortLinkPlugin",
            ]
        );
    }

    #[test]
    fn auth_and_pac_names_without_their_flags_load_nothing() {
        let config = with_plugins(&["AuthPlugin", "HttpWebServerPacFilePlugin"]);
        assert!(factories(&config).unwrap().is_empty());
    }

    #[test]
    fn unknown_name_lists_valid_names() {
        let config = with_plugins(&["ShortLinkPlugin", "proxy.plugin.NoSuchPlugin"]);
        let err = factories(&config).err().unwrap();
        assert!(
            err.starts_with("unknown plugin 'proxy.plugin.NoSuchPlugin'; valid plugins: "),
            "{err}"
        );
        for name in BUILTIN {
            assert!(err.contains(name), "{err}");
        }
        assert_eq!(valid_names().matches(", ").count(), BUILTIN.len() - 1);
    }
}
