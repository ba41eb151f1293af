//! Distributed runs on Ballista (DataFusion's distributed engine): the
//! scheduler and executor processes of `dprune cluster`, the codec that
//! lets plans with dprune's pieces travel between them, and the client call
//! that runs a physical plan on a cluster.
//!
//! Plans travel as protobuf (datafusion-proto), and a scalar function is
//! sent by name unless the codec encodes it. [`DpruneCodec`] wraps
//! Ballista's own codec and adds:
//!
//! * `dprune_nearest` with its centroids (`k × dim` f32, little endian), so
//!   executors search exactly the centroids the client fitted, with no
//!   shared storage needed for them;
//! * [`RowsExec`] and [`WriteExec`] (see [`super::plans`]), described as JSON.
//!
//! Every process that decodes a plan must use this codec: the scheduler
//! (which splits the plan into stages) and each executor; `dprune cluster
//! scheduler|executor` do. Stock Ballista binaries cannot run these plans.
//! Inputs and outputs are paths: every executor must see the same files
//! at the same absolute paths (one machine or a shared file system).

use std::net::SocketAddr;
use std::sync::Arc;

use arrow::array::RecordBatch;
use ballista_core::config::BallistaConfig;
use ballista_core::execution_plans::execute_physical_plan;
use ballista_core::extension::SessionConfigExt;
use ballista_core::registry::BallistaFunctionRegistry;
use ballista_core::serde::BallistaPhysicalExtensionCodec;
use ballista_executor::executor_process::{ExecutorProcessConfig, start_executor_process};
use ballista_scheduler::cluster::BallistaCluster;
use ballista_scheduler::config::SchedulerConfig;
use ballista_scheduler::scheduler_process::{create_scheduler, start_grpc_service_with_listener};
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::execution::TaskContext;
use datafusion::logical_expr::ScalarUDF;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::prelude::SessionConfig;
use datafusion_proto::physical_plan::{PhysicalExtensionCodec, PhysicalProtoConverterExtension};
use datafusion_proto::protobuf::{LogicalPlanNode, PhysicalPlanNode};
use futures::TryStreamExt;

use super::functions::{NEAREST, Nearest};
use super::{FunctionOptions, functions};
use crate::cluster::{Centroids, Distance};
use crate::{Error, Result};

use super::plans::{self, RowsExec, RowsSpec, WriteExec, WriteSpec};

const TAG_ROWS: &[u8] = b"dprune.rows.v1\n";
const TAG_WRITE: &[u8] = b"dprune.write.v1\n";
const TAG_NEAREST: &[u8] = b"dprune.nearest.v1\n";

/// Ballista's physical codec plus dprune's plans and `dprune_nearest`'s
/// centroids.
#[derive(Debug, Default)]
pub struct DpruneCodec {
    inner: BallistaPhysicalExtensionCodec,
}

fn codec_err(what: &str, e: impl std::fmt::Display) -> DataFusionError {
    DataFusionError::Internal(format!("dprune codec: {what}: {e}"))
}

/// `dprune_nearest`'s centroids as bytes: distance (0 cosine, 1 l2), dim
/// and k as u32, then the values, all little endian.
pub fn encode_centroids(c: &Centroids, buf: &mut Vec<u8>) {
    buf.extend_from_slice(TAG_NEAREST);
    buf.push(match c.distance() {
        Distance::Cosine => 0,
        Distance::L2 => 1,
    });
    buf.extend_from_slice(&(c.dim() as u32).to_le_bytes());
    buf.extend_from_slice(&(c.k() as u32).to_le_bytes());
    crate::io::le::with_bytes(c.as_slice(), |b| buf.extend_from_slice(b));
}

/// The inverse of [`encode_centroids`].
pub fn decode_centroids(buf: &[u8]) -> Result<Centroids> {
    let bad = |why: &str| Error::Internal(format!("dprune_nearest definition: {why}"));
    let rest = buf.strip_prefix(TAG_NEAREST).ok_or_else(|| bad("unknown tag"))?;
    if rest.len() < 9 {
        return Err(bad("truncated header"));
    }
    let distance = match rest[0] {
        0 => Distance::Cosine,
        1 => Distance::L2,
        d => return Err(bad(&format!("distance code {d}"))),
    };
    let dim = u32::from_le_bytes(rest[1..5].try_into().expect("4 bytes")) as usize;
    let k = u32::from_le_bytes(rest[5..9].try_into().expect("4 bytes")) as usize;
    let body = &rest[9..];
    if body.len() != k * dim * 4 {
        return Err(bad(&format!("{} bytes for {k} x {dim} values", body.len())));
    }
    let mut data = Vec::with_capacity(k * dim);
    crate::io::le::extend_f32(&mut data, body);
    Centroids::try_new(data, dim, distance)
}

fn one_input(inputs: &[Arc<dyn ExecutionPlan>]) -> DfResult<Arc<dyn ExecutionPlan>> {
    match inputs {
        [i] => Ok(i.clone()),
        _ => Err(codec_err("plan", format!("{} inputs, expected 1", inputs.len()))),
    }
}

impl PhysicalExtensionCodec for DpruneCodec {
    fn try_decode(
        &self,
        buf: &[u8],
        inputs: &[Arc<dyn ExecutionPlan>],
        ctx: &TaskContext,
        proto_converter: &dyn PhysicalProtoConverterExtension,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        if let Some(json) = buf.strip_prefix(TAG_ROWS) {
            let spec: RowsSpec = serde_json::from_slice(json).map_err(|e| codec_err("rows spec", e))?;
            return Ok(Arc::new(RowsExec::with_input(spec, one_input(inputs)?)));
        }
        if let Some(json) = buf.strip_prefix(TAG_WRITE) {
            let spec: WriteSpec = serde_json::from_slice(json).map_err(|e| codec_err("write spec", e))?;
            return Ok(Arc::new(WriteExec::with_input(spec, one_input(inputs)?)));
        }
        self.inner.try_decode(buf, inputs, ctx, proto_converter)
    }

    fn try_encode(
        &self,
        node: Arc<dyn ExecutionPlan>,
        buf: &mut Vec<u8>,
        proto_converter: &dyn PhysicalProtoConverterExtension,
    ) -> DfResult<()> {
        if let Some(r) = node.downcast_ref::<RowsExec>() {
            buf.extend_from_slice(TAG_ROWS);
            serde_json::to_writer(&mut *buf, r.spec()).map_err(|e| codec_err("rows spec", e))?;
            return Ok(());
        }
        if let Some(w) = node.downcast_ref::<WriteExec>() {
            buf.extend_from_slice(TAG_WRITE);
            serde_json::to_writer(&mut *buf, w.spec()).map_err(|e| codec_err("write spec", e))?;
            return Ok(());
        }
        self.inner.try_encode(node, buf, proto_converter)
    }

    fn try_decode_udf(&self, name: &str, buf: &[u8]) -> DfResult<Arc<ScalarUDF>> {
        if name == NEAREST && buf.starts_with(TAG_NEAREST) {
            let c = decode_centroids(buf).map_err(|e| codec_err(NEAREST, e))?;
            return Ok(Arc::new(ScalarUDF::from(Nearest::new(Some(Arc::new(c))))));
        }
        self.inner.try_decode_udf(name, buf)
    }

    fn try_encode_udf(&self, node: &ScalarUDF, buf: &mut Vec<u8>) -> DfResult<()> {
        if let Some(n) = node.inner().downcast_ref::<Nearest>()
            && let Some(c) = n.loaded()
        {
            encode_centroids(c, buf);
            return Ok(());
        }
        self.inner.try_encode_udf(node, buf)
    }
}

/// The functions executors know by name (DataFusion's built-ins and dprune's
/// stateless ones; `dprune_nearest` travels with its centroids).
fn registry() -> BallistaFunctionRegistry {
    let mut r = BallistaFunctionRegistry::default();
    for f in functions(&FunctionOptions::default()) {
        r.scalar_functions.insert(f.name().to_string(), Arc::new(f));
    }
    r
}

fn cluster_err(url: &str, e: impl std::fmt::Display) -> Error {
    Error::Cluster {
        url: url.to_string(),
        reason: e.to_string(),
    }
}

/// A failed job: dprune's own message when a task failed with one (the
/// cluster wraps it in several layers), else the engine's text.
fn job_err(url: &str, e: impl std::fmt::Display) -> Error {
    let text = e.to_string();
    match plans::own_message(&text) {
        Some(m) => cluster_err(url, format!("a task failed: {m}")),
        None => cluster_err(url, text),
    }
}

/// `df://host:port` (or `host:port`) → `(host, port)`.
pub fn parse_url(url: &str) -> Result<(String, u16)> {
    let rest = url.strip_prefix("df://").unwrap_or(url);
    let rest = rest.trim_end_matches('/');
    match rest.rsplit_once(':') {
        Some((h, p)) if !h.is_empty() => match p.parse::<u16>() {
            Ok(port) if port > 0 => Ok((h.to_string(), port)),
            _ => Err(Error::param("--cluster", format!("`{url}`: the port must be 1..65535"))),
        },
        _ => Err(Error::param("--cluster", format!("`{url}`: expected df://HOST:PORT"))),
    }
}

/// Runs a scheduler on `bind` (`HOST:PORT`, port 0 for a free one) until
/// the process ends; `ready` gets the bound address once it accepts jobs.
pub async fn run_scheduler(bind: &str, ready: impl FnOnce(SocketAddr)) -> Result<()> {
    let listener = tokio::net::TcpListener::bind(bind)
        .await
        .map_err(|e| cluster_err(bind, format!("cannot listen: {e}")))?;
    let addr = listener.local_addr().map_err(|e| cluster_err(bind, e))?;
    let config = SchedulerConfig {
        bind_host: addr.ip().to_string(),
        bind_port: addr.port(),
        external_host: addr.ip().to_string(),
        override_physical_codec: Some(Arc::new(DpruneCodec::default())),
        ..Default::default()
    };
    let cluster = BallistaCluster::new_from_config(&config)
        .await
        .map_err(|e| cluster_err(bind, e))?;
    let scheduler = create_scheduler::<LogicalPlanNode, PhysicalPlanNode>(cluster, Arc::new(config))
        .await
        .map_err(|e| cluster_err(bind, e))?;
    ready(addr);
    start_grpc_service_with_listener(listener, scheduler)
        .await
        .map_err(|e| cluster_err(bind, e))
}

/// How an executor joins a cluster.
#[derive(Debug, Clone)]
pub struct ExecutorOptions {
    /// The scheduler, `df://host:port`.
    pub scheduler: String,
    /// Address to listen on.
    pub bind_host: String,
    /// Arrow Flight port (shuffle data and results).
    pub flight_port: u16,
    /// gRPC port (tasks from the scheduler).
    pub grpc_port: u16,
    /// Tasks run at once (0: one per core).
    pub concurrent_tasks: usize,
    /// Folder for shuffle files (a temporary one when `None`).
    pub work_dir: Option<String>,
}

/// Runs an executor until the process ends or the scheduler stops it.
pub async fn run_executor(o: &ExecutorOptions) -> Result<()> {
    let (host, port) = parse_url(&o.scheduler)?;
    let config = ExecutorProcessConfig {
        bind_host: o.bind_host.clone(),
        external_host: Some(o.bind_host.clone()),
        port: o.flight_port,
        grpc_port: o.grpc_port,
        scheduler_host: host,
        scheduler_port: port,
        scheduler_connect_timeout_seconds: 30,
        vcores: o.concurrent_tasks,
        work_dir: o.work_dir.clone(),
        override_physical_codec: Some(Arc::new(DpruneCodec::default())),
        override_function_registry: Some(Arc::new(registry())),
        ..Default::default()
    };
    start_executor_process(Arc::new(config))
        .await
        .map_err(|e| cluster_err(&o.scheduler, e))
}

/// Runs `plan` on the cluster at `url` (`df://host:port`) and collects its
/// output.
pub async fn execute(url: &str, plan: Arc<dyn ExecutionPlan>) -> Result<Vec<RecordBatch>> {
    let (host, port) = parse_url(url)?;
    let codec: Arc<dyn PhysicalExtensionCodec> = Arc::new(DpruneCodec::default());
    let config = SessionConfig::new_with_ballista().with_ballista_physical_extension_codec(codec.clone());
    let session_id = format!(
        "dprune-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos())
    );
    let stream = execute_physical_plan::<PhysicalPlanNode>(
        format!("http://{host}:{port}"),
        &BallistaConfig::default(),
        plan,
        codec.as_ref(),
        session_id,
        config,
    )
    .await
    .map_err(|e| job_err(url, e))?;
    stream.try_collect().await.map_err(|e| job_err(url, e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::datafusion::plans::RowsTable;

    #[test]
    fn centroids_round_trip_bit_for_bit() {
        let data: Vec<f32> = (0..12).map(|i| (i as f32 * 0.37).sin() + 0.1).collect();
        for d in [Distance::Cosine, Distance::L2] {
            let c = Centroids::try_new(data.clone(), 4, d).unwrap();
            let mut buf = Vec::new();
            encode_centroids(&c, &mut buf);
            let back = decode_centroids(&buf).unwrap();
            assert_eq!(back.distance(), d);
            assert_eq!((back.k(), back.dim()), (3, 4));
            let bits = |c: &Centroids| c.as_slice().iter().map(|v| v.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&back), bits(&c));
        }
    }

    #[test]
    fn truncated_centroids_are_an_error() {
        let c = Centroids::try_new(vec![1.0, 0.0, 0.0, 1.0], 2, Distance::Cosine).unwrap();
        let mut buf = Vec::new();
        encode_centroids(&c, &mut buf);
        assert!(decode_centroids(&buf[..buf.len() - 1]).is_err());
        assert!(decode_centroids(b"something else").is_err());
    }

    /// A plan as the client sends it (scan, `dprune_nearest` with centroids)
    /// survives protobuf with the codec, and runs to the same output.
    #[tokio::test]
    async fn plans_travel_with_their_centroids_and_scans() {
        use datafusion::physical_plan::collect;
        use datafusion::prelude::SessionContext;
        use datafusion_proto::physical_plan::AsExecutionPlan;
        use datafusion_proto::protobuf::PhysicalPlanNode;

        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let files: Vec<std::path::PathBuf> = (0..2)
            .map(|i| root.join(format!("fixtures/laion_mini/part-0000{i}.parquet")))
            .collect();
        let dim = 32;
        let data: Vec<f32> = (0..3 * dim).map(|i| ((i * 7 % 11) as f32) - 5.0).collect();
        let c = Arc::new(Centroids::try_new(data, dim, Distance::Cosine).unwrap());
        let ctx = SessionContext::new();
        super::super::register(
            &ctx,
            &FunctionOptions {
                centroids: Some(c.clone()),
                encoder: None,
            },
        );
        let spec = RowsSpec {
            files,
            column: "clip_emb".into(),
            sidecars: vec![],
            dim,
            drop_invalid: false,
            batch_rows: 64,
        };
        ctx.register_table("rows", Arc::new(RowsTable::new(spec))).unwrap();
        let plan = ctx
            .sql("SELECT dprune_file, dprune_row, dprune_nearest(embedding)['distance'] AS d FROM rows")
            .await
            .unwrap()
            .create_physical_plan()
            .await
            .unwrap();
        let codec = DpruneCodec::default();
        let proto = PhysicalPlanNode::try_from_physical_plan(plan.clone(), &codec).unwrap();
        let mut bytes = Vec::new();
        proto.try_encode(&mut bytes).unwrap();
        // Decoded in a context that knows no dprune function: the centroids come from the bytes.
        let fresh = SessionContext::new();
        let back = PhysicalPlanNode::try_decode(bytes.as_slice())
            .unwrap()
            .try_into_physical_plan(&fresh.task_ctx(), &codec)
            .unwrap();
        let sorted = |b: Vec<RecordBatch>| {
            let mut rows = Vec::new();
            for b in b {
                use arrow::array::AsArray;
                use arrow::datatypes::{Float32Type, UInt32Type, UInt64Type};
                let (f, r, d) = (
                    b.column(0).as_primitive::<UInt32Type>(),
                    b.column(1).as_primitive::<UInt64Type>(),
                    b.column(2).as_primitive::<Float32Type>(),
                );
                for i in 0..b.num_rows() {
                    rows.push((f.value(i), r.value(i), d.value(i).to_bits()));
                }
            }
            rows.sort_unstable();
            rows
        };
        let want = sorted(collect(plan, ctx.task_ctx()).await.unwrap());
        let got = sorted(collect(back, fresh.task_ctx()).await.unwrap());
        assert_eq!(want.len(), 1000, "two shards of the fixture, every row once");
        assert_eq!(want, got);
    }

    #[test]
    fn urls() {
        assert_eq!(parse_url("df://127.0.0.1:50050").unwrap(), ("127.0.0.1".into(), 50050));
        assert_eq!(parse_url("node7:9").unwrap(), ("node7".into(), 9));
        for bad in ["df://host", "df://:5", "df://h:0", "df://h:x", ""] {
            let e = parse_url(bad).unwrap_err().to_string();
            assert!(e.contains("--cluster"), "{bad}: {e}");
        }
    }
}
