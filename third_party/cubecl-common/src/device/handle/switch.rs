//! hierspec patch (not upstream): pick the device handle at run time.
//!
//! Upstream cubecl 0.10 always hands server work to a device thread through a batching channel
//! (`channel.rs`): the thread takes tasks only in full buffers of 32 or when a blocking call
//! flushes the rest, and it sleeps in 150 us steps once idle. A phase of a few launches followed
//! by a read therefore starts only at the read. `CUBECL_DEVICE_HANDLE=direct` runs each task on
//! the calling thread instead (the re-entrant mutex handle upstream uses without threads), so a
//! launch reaches the driver when it is made, but the caller also does all of the server's work.
//! `queue` keeps a device thread and hands it each task at once. Unset or `channel` keeps
//! upstream's behaviour.

use super::{CallError, DeviceHandleSpec, ServiceCreationError, channel, reentrant};
use crate::device::{DeviceId, DeviceService, ServerUtilitiesHandle};
use std::sync::OnceLock;

/// How server tasks reach the device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HandleMode {
    /// Upstream: a device thread fed by a batching channel.
    Channel,
    /// A device thread fed one task per message (upstream's `normal_channel`, with a spinning
    /// receiver): launches overlap the caller's work as with `Channel`, without waiting for a batch.
    Queue,
    /// Every task runs on the calling thread, under a re-entrant lock.
    Direct,
}

impl HandleMode {
    /// The mode a value of `CUBECL_DEVICE_HANDLE` names (unset or empty: `Channel`), or the error
    /// to show for a value it does not know.
    pub fn parse(value: Option<&str>) -> Result<Self, alloc::string::String> {
        match value {
            None | Some("") | Some("channel") => Ok(Self::Channel),
            Some("queue") => Ok(Self::Queue),
            Some("direct") => Ok(Self::Direct),
            Some(other) => Err(alloc::format!(
                "CUBECL_DEVICE_HANDLE={other:?}: expected `channel`, `queue` or `direct`"
            )),
        }
    }

    /// The value of `CUBECL_DEVICE_HANDLE` that selects this mode.
    pub fn name(self) -> &'static str {
        match self {
            Self::Channel => "channel",
            Self::Queue => "queue",
            Self::Direct => "direct",
        }
    }
}

/// The mode of this process, read once from `CUBECL_DEVICE_HANDLE` (see [`HandleMode::parse`]).
///
/// # Panics
/// On a value `parse` refuses: a typo must not silently measure the wrong mode. Callers that want
/// an error instead check the variable with `parse` first.
pub fn handle_mode() -> HandleMode {
    static MODE: OnceLock<HandleMode> = OnceLock::new();
    *MODE.get_or_init(|| {
        let value = std::env::var("CUBECL_DEVICE_HANDLE").ok();
        HandleMode::parse(value.as_deref()).unwrap_or_else(|e| panic!("{e}"))
    })
}

pub enum SwitchDeviceHandle<S: DeviceService> {
    Channel(channel::ChannelDeviceHandle<S>),
    Direct(reentrant::ReentrantMutexDeviceHandle<S>),
}

impl<S: DeviceService> Clone for SwitchDeviceHandle<S> {
    fn clone(&self) -> Self {
        match self {
            Self::Channel(h) => Self::Channel(h.clone()),
            Self::Direct(h) => Self::Direct(h.clone()),
        }
    }
}

macro_rules! each {
    ($self:ident, $h:ident => $e:expr) => {
        match $self {
            SwitchDeviceHandle::Channel($h) => $e,
            SwitchDeviceHandle::Direct($h) => $e,
        }
    };
}

impl<S: DeviceService> DeviceHandleSpec<S> for SwitchDeviceHandle<S> {
    // Only collective operations read this (they refuse a blocking handle); one process uses
    // one mode, so the channel's answer is kept and direct mode is for single-device work.
    const BLOCKING: bool = false;

    fn insert(device_id: DeviceId, service: S) -> Result<Self, ServiceCreationError> {
        Ok(match handle_mode() {
            HandleMode::Channel | HandleMode::Queue => Self::Channel(DeviceHandleSpec::insert(device_id, service)?),
            HandleMode::Direct => Self::Direct(DeviceHandleSpec::insert(device_id, service)?),
        })
    }

    fn new(device_id: DeviceId) -> Self {
        match handle_mode() {
            HandleMode::Channel | HandleMode::Queue => Self::Channel(DeviceHandleSpec::new(device_id)),
            HandleMode::Direct => {
                let h: reentrant::ReentrantMutexDeviceHandle<S> = DeviceHandleSpec::new(device_id);
                // The channel handle creates the service in `new`; the re-entrant one only on
                // first use, and `utilities()` (which `ComputeClient::load` calls first) needs it.
                let _ = h.submit_blocking(|_| ());
                Self::Direct(h)
            }
        }
    }

    fn device_id(&self) -> DeviceId {
        each!(self, h => h.device_id())
    }

    fn utilities(&self) -> ServerUtilitiesHandle {
        each!(self, h => h.utilities())
    }

    fn flush_queue(&self) {
        each!(self, h => h.flush_queue())
    }

    fn submit_blocking<'a, R: Send, T: FnOnce(&mut S) -> R + Send + 'a>(
        &self,
        task: T,
    ) -> Result<R, CallError> {
        each!(self, h => h.submit_blocking(task))
    }

    fn submit<T: FnOnce(&mut S) + Send + 'static>(&self, task: T) {
        each!(self, h => h.submit(task))
    }

    fn exclusive<R: Send, T: FnOnce() -> R + Send>(&self, task: T) -> Result<R, CallError> {
        each!(self, h => h.exclusive(task))
    }
}
