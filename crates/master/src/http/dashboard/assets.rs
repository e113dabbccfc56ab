//! The dashboard's static files, embedded in the binary and served from
//! `/static/`: htmx (vendored, `assets/VENDORED.md` says which version and
//! under which licence), the stylesheet and the live stream's script.
//! Nothing is fetched from anywhere else (see the CSP in `mod.rs`).

/// A static file: its name under `/static/`, its media type and bytes.
#[derive(Debug)]
pub struct Asset {
    pub name: &'static str,
    pub content_type: &'static str,
    pub bytes: &'static [u8],
}

/// Every file under `/static/`.
pub const ASSETS: &[Asset] = &[
    Asset {
        name: "htmx.min.js",
        content_type: "text/javascript; charset=utf-8",
        bytes: include_bytes!("assets/htmx.min.js"),
    },
    Asset { name: "live.js", content_type: "text/javascript; charset=utf-8", bytes: include_bytes!("assets/live.js") },
    Asset { name: "style.css", content_type: "text/css; charset=utf-8", bytes: include_bytes!("assets/style.css") },
    Asset {
        name: "htmx.LICENSE",
        content_type: "text/plain; charset=utf-8",
        bytes: include_bytes!("assets/htmx.LICENSE"),
    },
];

/// The static file called `name`.
pub fn find(name: &str) -> Option<&'static Asset> {
    ASSETS.iter().find(|a| a.name == name)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The vendored htmx is the one VENDORED.md records, by version and
    /// hash, and its licence travels with it.
    #[test]
    fn htmx_is_the_recorded_version() {
        let record = include_str!("assets/VENDORED.md");
        let htmx = std::str::from_utf8(find("htmx.min.js").unwrap().bytes).unwrap();
        let version = htmx.split("version:\"").nth(1).and_then(|rest| rest.split('"').next()).unwrap();
        assert!(record.contains(&format!("| htmx | {version} | 0BSD")), "VENDORED.md does not record htmx {version}");
        let hex = halite_proto::hash::Sha256::of(find("htmx.min.js").unwrap().bytes).to_hex();
        assert!(record.contains(&hex), "VENDORED.md does not record htmx.min.js's sha256 {hex}");
        assert!(std::str::from_utf8(find("htmx.LICENSE").unwrap().bytes).unwrap().contains("Zero-Clause BSD"));
    }

    /// No asset names another origin: a page loads nothing from elsewhere
    /// (the CSP forbids it; this keeps our own files from trying).
    #[test]
    fn our_assets_reach_no_other_origin() {
        for asset in ASSETS.iter().filter(|a| a.name != "htmx.min.js" && a.name != "htmx.LICENSE") {
            let text = std::str::from_utf8(asset.bytes).unwrap();
            for scheme in ["http://", "https://", "//cdn", "@import"] {
                assert!(!text.contains(scheme), "{} mentions {scheme}", asset.name);
            }
        }
        for (name, source) in super::super::render::TEMPLATES {
            for scheme in ["http://", "https://", "src=\"//", "href=\"//"] {
                assert!(!source.contains(scheme), "template {name} mentions {scheme}");
            }
        }
    }
}
