//! `serve`: the engine behind an OpenAI-compatible HTTP API (`/v1/chat/completions`,
//! `/v1/completions`, `/v1/models`, `/health`), streaming as server-sent events.

use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroUsize;

use burn::tensor::Device;
use clap::Parser;
use hierspec::backend::{dispatch, BackendJob, DeviceKind, Precision};
use hierspec::engine::{model_name, Engine, EngineArgs, Method};
use hierspec::serve::{serve, Options};
use hierspec_model::Result;

#[derive(Parser, Debug, Clone)]
#[command(about = "Serve a model over an OpenAI-compatible HTTP API, one generation at a time")]
struct Args {
    #[command(flatten)]
    engine: EngineArgs,
    /// Methods requests may ask for with `"method"` (comma-separated); the first is the default.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "ar")]
    method: Vec<Method>,
    #[arg(long, default_value = "127.0.0.1")]
    host: IpAddr,
    /// 0 picks a free port (the bound address is printed).
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// Requests that may wait while one generates; more get 429.
    #[arg(long, default_value = "16")]
    queue: NonZeroUsize,
    /// The model id clients see [default: the --model alias or file name].
    #[arg(long)]
    served_model_name: Option<String>,
    #[arg(long, value_enum, default_value_t = DeviceKind::Cpu)]
    device: DeviceKind,
    #[arg(long, value_enum, default_value_t = Precision::F32)]
    dtype: Precision,
}

impl BackendJob for Args {
    type Output = ();
    fn run(self, device: Device) -> Result<()> {
        let mut methods: Vec<Method> = Vec::new();
        for m in &self.method {
            if !methods.contains(m) {
                methods.push(*m);
            }
        }
        let engine = Engine::load(self.engine.clone(), &methods, &device)?;
        let model_name = self.served_model_name.clone().unwrap_or_else(|| model_name(&self.engine.model));
        serve(engine, Options { addr: SocketAddr::new(self.host, self.port), methods, queue: self.queue, model_name })
    }
}

fn main() {
    let args = Args::parse();
    if let Err(e) = dispatch(args.device, args.dtype, args.clone()) {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}
