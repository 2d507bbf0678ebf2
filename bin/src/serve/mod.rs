//! `serve`: an OpenAI-compatible HTTP server over the engine. Requests are checked on the HTTP side
//! ([`wire`]), wait in a bounded queue (429 when it is full) and run one at a time on the thread that
//! owns the models ([`worker`]); text streams back as server-sent events or in one response.

pub mod wire;
pub mod worker;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::sse::{Event as Sse, KeepAlive};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures_util::stream::{self, Stream};
use serde_json::{json, Value};
use tokio::sync::mpsc;

use hierspec_model::{Error, Result, TextTokenizer};

use crate::engine::{Engine, Method};
use wire::{ApiError, Head, Job, Kind, Limits};
use worker::{Event, Work};

/// What the HTTP side knows of the engine.
struct Served {
    model: String,
    methods: Vec<Method>,
    tokenizer: TextTokenizer,
    context: usize,
    seed: u64,
    jobs: mpsc::Sender<Work>,
    next_id: AtomicU64,
}

type App = Arc<Served>;

/// Where and how to serve.
pub struct Options {
    pub addr: SocketAddr,
    /// The methods requests may ask for (`"method"` in the body); the first is the default.
    pub methods: Vec<Method>,
    /// Requests that may wait for the engine; one more is refused with 429.
    pub queue: NonZeroUsize,
    /// The id `/v1/models` lists and responses carry.
    pub model_name: String,
}

/// Listen on `opts.addr`, then run jobs on this thread until the process ends. Prints the bound
/// address (`listening on http://...`) once requests are accepted.
pub fn serve(engine: Engine, opts: Options) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| Error::Setting(format!("cannot start the HTTP runtime: {e}")))?;
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind(opts.addr))
        .map_err(|e| Error::Setting(format!("cannot listen on {}: {e}", opts.addr)))?;
    let local = listener.local_addr().map_err(|e| Error::Setting(format!("listener address: {e}")))?;
    let (jobs, queue) = mpsc::channel(opts.queue.get());
    let app: App = Arc::new(Served {
        model: opts.model_name,
        methods: opts.methods,
        tokenizer: engine.target.tokenizer.clone(),
        context: engine.target.context_len(),
        seed: engine.args.seed,
        jobs,
        next_id: AtomicU64::new(0),
    });
    let router = Router::new()
        .route("/v1/chat/completions", post(chat))
        .route("/v1/completions", post(completions))
        .route("/v1/models", get(models))
        .route("/health", get(|| async { Json(json!({ "status": "ok" })) }))
        .fallback(|| async { error(ApiError { status: 404, kind: "not_found_error", message: "no such endpoint".into(), param: None }) })
        .with_state(app.clone());
    runtime.spawn(async move {
        if let Err(e) = axum::serve(listener, router).await {
            eprintln!("[serve] the HTTP server stopped: {e}");
            std::process::exit(1);
        }
    });
    let methods: Vec<&str> = app.methods.iter().map(|m| m.name()).collect();
    println!("listening on http://{local} (model {}, methods {})", app.model, methods.join(", "));
    drop(app);
    worker::run(&engine, queue);
    Ok(())
}

fn error(e: ApiError) -> Response {
    let status = StatusCode::from_u16(e.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (status, Json(e.body())).into_response()
}

async fn models(State(app): State<App>) -> Json<Value> {
    Json(json!({
        "object": "list",
        "data": [{ "id": app.model, "object": "model", "created": now(), "owned_by": "hierspec" }],
    }))
}

async fn chat(State(app): State<App>, body: Bytes) -> Response {
    let job = wire::chat_job(&body, &limits(&app));
    respond(app, job).await
}

async fn completions(State(app): State<App>, body: Bytes) -> Response {
    let job = wire::completion_job(&body, &limits(&app));
    respond(app, job).await
}

fn limits(app: &Served) -> Limits<'_> {
    Limits { tokenizer: &app.tokenizer, context: app.context, methods: &app.methods, seed: app.seed }
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// Queue a checked job and answer with its text, streamed or whole.
async fn respond(app: App, job: std::result::Result<Job, ApiError>) -> Response {
    let job = match job {
        Ok(j) => j,
        Err(e) => return error(e),
    };
    let (tx, mut rx) = mpsc::unbounded_channel();
    let (kind, stream) = (job.kind, job.stream);
    match app.jobs.try_send(Work { job, events: tx }) {
        Ok(()) => {}
        Err(mpsc::error::TrySendError::Full(_)) => {
            return error(ApiError {
                status: 429,
                kind: "rate_limit_exceeded",
                message: "the server is busy: its queue is full, retry later".into(),
                param: None,
            })
        }
        Err(mpsc::error::TrySendError::Closed(_)) => {
            return error(ApiError { status: 503, kind: "server_error", message: "the engine has stopped".into(), param: None })
        }
    }
    let prefix = match kind {
        Kind::Chat => "chatcmpl",
        Kind::Completion => "cmpl",
    };
    let created = now();
    let id = format!("{prefix}-{created}-{}", app.next_id.fetch_add(1, Ordering::Relaxed));
    if stream {
        let events = sse(kind, id, created, app.model.clone(), rx);
        return axum::response::Sse::new(events).keep_alive(KeepAlive::default()).into_response();
    }
    let mut text = String::new();
    while let Some(event) = rx.recv().await {
        match event {
            Event::Text(t) => text += &t,
            Event::Done(done) => {
                let head = Head { id: &id, created, model: &app.model };
                return Json(wire::response(kind, &head, &text, &done)).into_response();
            }
            Event::Error(e) => return error(e),
        }
    }
    error(ApiError { status: 500, kind: "server_error", message: "the engine dropped the request".into(), param: None })
}

/// A job's events as OpenAI's chunks, ending with `[DONE]`.
fn sse(kind: Kind, id: String, created: u64, model: String, rx: mpsc::UnboundedReceiver<Event>) -> impl Stream<Item = std::result::Result<Sse, Infallible>> {
    // (receiver, first chunk still to go, [DONE] still to go)
    stream::unfold((rx, true, true), move |(mut rx, first, open)| {
        let (id, model) = (id.clone(), model.clone());
        async move {
            if !open {
                return None;
            }
            let head = Head { id: &id, created, model: &model };
            let data = match rx.recv().await {
                Some(Event::Text(t)) => wire::chunk(kind, &head, Some(&t), first, None),
                Some(Event::Done(done)) => wire::chunk(kind, &head, None, first, Some(&done)),
                Some(Event::Error(e)) => e.body(),
                None => return Some((Ok(Sse::default().data("[DONE]")), (rx, false, false))),
            };
            Some((Ok(Sse::default().data(data.to_string())), (rx, false, true)))
        }
    })
}
