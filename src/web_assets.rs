//! The bundled web client (`web/`), compiled into the binary.
//!
//! [`asset`] maps a request path to a file's bytes, its `Content-Type` and
//! its `Cache-Control`. The page itself is `no-cache` (always revalidated,
//! so a new build is picked up at once); scripts, styles and the icon may be
//! reused for a short while and are revalidated after that.

/// One static file of the web client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Asset {
    pub content_type: &'static str,
    pub body: &'static [u8],
    pub cache_control: &'static str,
}

const HTML: &str = "text/html; charset=utf-8";
const JS: &str = "text/javascript; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";
const SVG: &str = "image/svg+xml";

/// For the page: always revalidate.
pub const CACHE_HTML: &str = "no-cache";
/// For scripts, styles and images: fresh for five minutes, then revalidated.
pub const CACHE_STATIC: &str = "public, max-age=300, must-revalidate";

const INDEX: Asset = Asset {
    content_type: HTML,
    body: include_bytes!("../web/index.html"),
    cache_control: CACHE_HTML,
};

const ADMIN: Asset = Asset {
    content_type: HTML,
    body: include_bytes!("../web/admin.html"),
    cache_control: CACHE_HTML,
};

/// Every path served, with its asset (`/` and `/index.html` are the same
/// page; so are `/admin` and `/admin.html`, the operator's page).
const ASSETS: &[(&str, Asset)] = &[
    ("/", INDEX),
    ("/index.html", INDEX),
    ("/admin", ADMIN),
    ("/admin.html", ADMIN),
    (
        "/admin.js",
        Asset {
            content_type: JS,
            body: include_bytes!("../web/admin.js"),
            cache_control: CACHE_STATIC,
        },
    ),
    (
        "/admin.css",
        Asset {
            content_type: CSS,
            body: include_bytes!("../web/admin.css"),
            cache_control: CACHE_STATIC,
        },
    ),
    (
        "/corechat.js",
        Asset {
            content_type: JS,
            body: include_bytes!("../web/corechat.js"),
            cache_control: CACHE_STATIC,
        },
    ),
    (
        "/app.js",
        Asset {
            content_type: JS,
            body: include_bytes!("../web/app.js"),
            cache_control: CACHE_STATIC,
        },
    ),
    (
        "/style.css",
        Asset {
            content_type: CSS,
            body: include_bytes!("../web/style.css"),
            cache_control: CACHE_STATIC,
        },
    ),
    (
        "/favicon.svg",
        Asset {
            content_type: SVG,
            body: include_bytes!("../web/favicon.svg"),
            cache_control: CACHE_STATIC,
        },
    ),
];

/// The asset served at `path` (the request target's path; a query string or
/// fragment, if still attached, is ignored). `None` for anything else.
pub fn asset(path: &str) -> Option<Asset> {
    let path = path.split(['?', '#']).next().unwrap_or(path);
    ASSETS.iter().find(|(p, _)| *p == path).map(|(_, a)| *a)
}

/// The paths [`asset`] answers, e.g. for logging or tests.
pub fn paths() -> impl Iterator<Item = &'static str> {
    ASSETS.iter().map(|(p, _)| *p)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(a: &Asset) -> &'static str {
        std::str::from_utf8(a.body).expect("web assets are UTF-8")
    }

    #[test]
    fn root_and_index_are_the_page() {
        let root = asset("/").unwrap();
        let index = asset("/index.html").unwrap();
        assert_eq!(root, index);
        assert_eq!(root.content_type, "text/html; charset=utf-8");
        assert_eq!(root.cache_control, "no-cache");
        assert!(text(&root).starts_with("<!doctype html>"));
    }

    #[test]
    fn scripts_and_styles() {
        for p in ["/corechat.js", "/app.js"] {
            let a = asset(p).unwrap();
            assert_eq!(a.content_type, "text/javascript; charset=utf-8", "{p}");
            assert_eq!(a.cache_control, CACHE_STATIC, "{p}");
            assert!(a.cache_control.contains("max-age="));
            assert!(a.cache_control.contains("must-revalidate"));
        }
        let css = asset("/style.css").unwrap();
        assert_eq!(css.content_type, "text/css; charset=utf-8");
        assert_eq!(css.cache_control, CACHE_STATIC);
        assert_eq!(asset("/favicon.svg").unwrap().content_type, "image/svg+xml");
    }

    /// Each served body is the file in `web/` as it is on disk now (read at
    /// run time, not through `include_bytes!`), and every file of `web/`
    /// but its README is served. `tests/core.rs` checks the same over HTTP.
    #[test]
    fn bodies_are_the_files() {
        let web = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("web");
        let mut files = 0;
        for entry in std::fs::read_dir(&web).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_str().unwrap().to_owned();
            if name == "README.md" {
                continue;
            }
            let served =
                asset(&format!("/{name}")).unwrap_or_else(|| panic!("web/{name} is not served"));
            assert!(
                served.body == std::fs::read(&path).unwrap().as_slice(),
                "/{name} differs from web/{name}"
            );
            files += 1;
        }
        assert!(files >= 5, "{files} files in web/");
        assert_eq!(
            asset("/").unwrap().body,
            std::fs::read(web.join("index.html")).unwrap().as_slice()
        );
        assert!(text(&asset("/corechat.js").unwrap()).contains("export class CoreChat"));
        for p in paths() {
            assert!(!asset(p).unwrap().body.is_empty(), "{p}");
        }
    }

    #[test]
    fn unknown_paths_are_none() {
        for p in [
            "",
            "/index.htm",
            "/web/app.js",
            "/../Cargo.toml",
            "/app.js/",
            "//app.js",
            "/APP.JS",
            "/ws",
            "/health",
            "/api/guest",
        ] {
            assert!(asset(p).is_none(), "{p:?}");
        }
    }

    #[test]
    fn query_string_is_ignored() {
        assert_eq!(asset("/app.js?v=2"), asset("/app.js"));
        assert_eq!(asset("/?x=1"), asset("/"));
    }

    #[test]
    fn pages_load_only_bundled_resources() {
        let is_admin = |p: &str| p.starts_with("/admin");
        let html = text(&asset("/").unwrap());
        for p in paths().filter(|p| p.len() > 1 && *p != "/index.html" && !is_admin(p)) {
            assert!(html.contains(p), "index.html should reference {p}");
        }
        let admin = text(&asset("/admin").unwrap());
        assert_eq!(asset("/admin"), asset("/admin.html"));
        for p in ["/admin.js", "/admin.css", "/style.css", "/favicon.svg"] {
            assert!(admin.contains(p), "admin.html should reference {p}");
        }
        for (name, body) in [
            ("index.html", html),
            ("admin.html", admin),
            ("style.css", text(&asset("/style.css").unwrap())),
            ("admin.css", text(&asset("/admin.css").unwrap())),
        ] {
            for bad in ["http://", "https://", "//fonts.", "@import", "@font-face"] {
                assert!(!body.contains(bad), "{name} must not load {bad}");
            }
        }
        // every src/href in the pages is a root-relative path that is served
        for page in [html, admin] {
            for attr in ["src=\"", "href=\""] {
                for part in page.split(attr).skip(1) {
                    let target = part.split('"').next().unwrap();
                    assert!(asset(target).is_some(), "{target} is not bundled");
                }
            }
        }
    }

    #[test]
    fn scripts_never_write_html() {
        for p in ["/app.js", "/corechat.js", "/admin.js"] {
            let js = text(&asset(p).unwrap());
            for bad in [
                "innerHTML",
                "outerHTML",
                "insertAdjacentHTML",
                "document.write",
                "eval(",
            ] {
                assert!(!js.contains(bad), "{p} uses {bad}");
            }
        }
    }
}
