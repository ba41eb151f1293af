//! Declarative runs: a `pipelines/*.toml` file is a [`FilterConfig`]
//! (inputs, embedding source, parameters, output) written as TOML. Unknown
//! keys are errors that name the key; paths are relative to the folder
//! dprune runs in.

use std::path::Path;

use crate::pipeline::FilterConfig;
use crate::{Error, Result};

/// Reads and checks a pipeline file.
pub fn load_pipeline(path: &Path) -> Result<FilterConfig> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io("reading", path, e))?;
    parse_pipeline(&text).map_err(|reason| Error::Config {
        path: path.to_path_buf(),
        reason,
    })
}

/// Parses pipeline TOML; the error text names the key and line.
pub fn parse_pipeline(text: &str) -> std::result::Result<FilterConfig, String> {
    let cfg: FilterConfig = toml::from_str(text).map_err(|e| e.to_string().trim_end().to_string())?;
    if cfg.inputs.is_empty() {
        return Err("no `inputs` given".into());
    }
    cfg.params.validate().map_err(|e| e.to_string())?;
    Ok(cfg)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::EmbeddingSpec;
    use crate::select::Budget;

    #[test]
    fn every_shipped_pipeline_parses_and_validates() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("pipelines");
        let mut n = 0;
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            if p.extension().is_some_and(|x| x == "toml") {
                load_pipeline(&p).unwrap_or_else(|e| panic!("{e}"));
                n += 1;
            }
        }
        assert!(n >= 3, "expected the shipped pipelines, found {n}");
    }

    #[test]
    fn parses_nested_tables_and_variants() {
        let cfg = parse_pipeline(
            r#"
            inputs = ["a/*.parquet"]
            embeddings = { column = "clip_emb" }
            [params]
            keep = { count = 10 }
            [params.kmeans]
            k = 7
            distance = "l2"
            [output]
            dir = "out"
            "#,
        )
        .unwrap();
        assert_eq!(cfg.embeddings, EmbeddingSpec::Column("clip_emb".into()));
        assert_eq!(cfg.params.keep, Budget::Count(10));
        assert_eq!(cfg.params.kmeans.k, Some(7));
    }

    #[test]
    fn unknown_keys_are_named() {
        let err = parse_pipeline("inputs = [\"x\"]\n[params]\nkeepp = 3\n").unwrap_err();
        assert!(err.contains("unknown field `keepp`"), "{err}");
        let err = parse_pipeline("inputs = [\"x\"]\n[params.kmeans]\nkk = 3\n").unwrap_err();
        assert!(err.contains("unknown field `kk`"), "{err}");
        let err = parse_pipeline("inputs = [\"x\"]\n[params]\nkeep = { fraction = 2.0 }\n").unwrap_err();
        assert!(err.contains("outside (0, 1]"), "{err}");
    }
}
