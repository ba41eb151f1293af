//! Declarative runs: a `pipelines/*.toml` file is a [`FilterConfig`]
//! (inputs, embedding source, parameters, output) written as TOML, or,
//! with `command = "annotate"` at the top, an [`AnnotateConfig`]. Unknown
//! keys are errors that name the key; paths are relative to the folder
//! dprune runs in.

use std::path::Path;

use crate::pipeline::FilterConfig;
use crate::pipeline::annotate::AnnotateConfig;
use crate::{Error, Result};

/// A job described by a pipeline file.
#[derive(Debug, Clone, PartialEq)]
pub enum Job {
    /// `dprune filter` (the default, or `command = "filter"`).
    Filter(Box<FilterConfig>),
    /// `dprune annotate` (`command = "annotate"`).
    Annotate(Box<AnnotateConfig>),
}

/// Reads and checks a pipeline file of any command.
pub fn load_job(path: &Path) -> Result<Job> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io("reading", path, e))?;
    parse_job(&text).map_err(|reason| Error::Config {
        path: path.to_path_buf(),
        reason,
    })
}

/// Parses pipeline TOML of any command; the error text names the key.
pub fn parse_job(text: &str) -> std::result::Result<Job, String> {
    let mut table: toml::Table = toml::from_str(text).map_err(|e| e.to_string().trim_end().to_string())?;
    let command = match table.remove("command") {
        None => return parse_pipeline(text).map(|c| Job::Filter(Box::new(c))),
        Some(toml::Value::String(c)) => c,
        Some(other) => return Err(format!("`command` must be a string, found {other}")),
    };
    match command.as_str() {
        // Line numbers come from parsing the text itself, without the `command` key.
        "filter" => {
            let cfg: FilterConfig = toml::Value::Table(table)
                .try_into()
                .map_err(|e: toml::de::Error| e.to_string())?;
            if cfg.inputs.is_empty() {
                return Err("no `inputs` given".into());
            }
            cfg.params.validate().map_err(|e| e.to_string())?;
            Ok(Job::Filter(Box::new(cfg)))
        }
        "annotate" => {
            let cfg: AnnotateConfig = toml::Value::Table(table)
                .try_into()
                .map_err(|e: toml::de::Error| e.to_string())?;
            if cfg.inputs.is_empty() {
                return Err("no `inputs` given".into());
            }
            cfg.params.validate().map_err(|e| e.to_string())?;
            Ok(Job::Annotate(Box::new(cfg)))
        }
        other => Err(format!("unknown command `{other}`: expected filter or annotate")),
    }
}

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
        let (mut filters, mut annotates) = (0, 0);
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            if p.extension().is_some_and(|x| x == "toml") {
                match load_job(&p).unwrap_or_else(|e| panic!("{e}")) {
                    Job::Filter(_) => filters += 1,
                    Job::Annotate(_) => annotates += 1,
                }
            }
        }
        assert!(
            filters >= 5 && annotates >= 1,
            "found {filters} filter and {annotates} annotate pipelines"
        );
    }

    #[test]
    fn command_selects_the_job_and_unknown_keys_are_named() {
        let j = parse_job("command = \"annotate\"\ninputs = [\"p.parquet\"]\noutput = \"o.parquet\"\n[params]\nbudget = 5\nmethod = \"ideal\"\n").unwrap();
        match j {
            Job::Annotate(a) => assert_eq!((a.params.budget, a.output.to_str()), (5, Some("o.parquet"))),
            other => panic!("{other:?}"),
        }
        let e = parse_job("command = \"annotate\"\ninputs = [\"p\"]\n[params]\nbudgett = 5\n").unwrap_err();
        assert!(e.contains("unknown field `budgett`"), "{e}");
        let e = parse_job("command = \"sql\"\ninputs = [\"p\"]\n").unwrap_err();
        assert!(e.contains("unknown command `sql`"), "{e}");
        assert!(matches!(
            parse_job("command = \"filter\"\ninputs = [\"p\"]\n").unwrap(),
            Job::Filter(_)
        ));
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
    fn where_is_a_filter_param() {
        let cfg = parse_pipeline("inputs = [\"x\"]\n[params]\nwhere = \"similarity > 0.3\"\n");
        if cfg!(feature = "datafusion") {
            assert_eq!(cfg.unwrap().params.where_sql.as_deref(), Some("similarity > 0.3"));
        } else {
            assert!(cfg.unwrap_err().contains("without SQL support"));
        }
        let err = parse_pipeline("inputs = [\"x\"]\n[params]\nwhere = \" \"\n").unwrap_err();
        assert!(err.contains("--where") && err.contains("empty"), "{err}");
    }

    #[test]
    fn a_pipeline_can_name_a_cluster() {
        let cfg = parse_pipeline("inputs = [\"x\"]\ncluster = \"df://10.0.0.5:50050\"\n").unwrap();
        assert_eq!(cfg.cluster.as_deref(), Some("df://10.0.0.5:50050"));
        assert_eq!(parse_pipeline("inputs = [\"x\"]\n").unwrap().cluster, None);
    }

    #[test]
    fn a_pipeline_can_choose_the_engine() {
        use crate::pipeline::Engine;
        let cfg = parse_pipeline("inputs = [\"x\"]\nengine = \"sql\"\n").unwrap();
        assert_eq!(cfg.engine, Engine::Sql);
        assert_eq!(parse_pipeline("inputs = [\"x\"]\n").unwrap().engine, Engine::Native);
        let err = parse_pipeline("inputs = [\"x\"]\nengine = \"spark\"\n").unwrap_err();
        assert!(err.contains("spark") && err.contains("sql"), "{err}");
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
