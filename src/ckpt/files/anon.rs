//! Objects without a file (eventfd, signalfd, timerfd, inotify, epoll) made
//! again from their saved state, in the process that had them or, when several
//! processes shared one (inherited across fork(2), passed over a socket), once
//! in the init before any process is forked, every holder getting that one.
//! An epoll instance's registrations name descriptors: they are made by the
//! process whose descriptor the image describes in full, once its descriptors
//! are in place.

use std::os::fd::OwnedFd;

use crate::ckpt::image::FdKind;

/// Makes the object `kind` describes; `flags` are its open(2) flags. None if
/// `kind` is not one of these objects.
pub fn create(kind: &FdKind, flags: u32) -> Option<Result<OwnedFd, String>> {
    let r = match kind {
        FdKind::EventFd { count, semaphore } => {
            super::eventfd::restore(*count, *semaphore).map_err(|e| format!("eventfd: {e}"))
        }
        FdKind::SignalFd { mask } => {
            super::signalfd::restore(*mask).map_err(|e| format!("signalfd: {e}"))
        }
        FdKind::TimerFd(t) => super::timerfd::restore(t).map_err(|e| format!("timerfd: {e}")),
        FdKind::Inotify { watches } => {
            super::inotify::restore(flags & libc::O_NONBLOCK as u32 != 0, watches)
        }
        FdKind::Epoll { .. } => super::epoll::create().map_err(|e| format!("epoll_create: {e}")),
        _ => return None,
    };
    Some(r)
}
