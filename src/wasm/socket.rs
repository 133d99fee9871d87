//! The browser's WebSocket as a protocol `Transport`. Frames arrive through callbacks, so
//! they are queued in a channel that `recv` awaits; a close or error ends the channel and
//! the pass fails cleanly with `SYNC_CONNECTION` (the stored points make the next pass
//! resume where this one stopped). Each frame is decoded as it arrives: a pass that is
//! waiting for IndexedDB to store one chunk decodes the next meanwhile, instead of after.

use futures::channel::{mpsc, oneshot};
use futures::StreamExt;
use wasm_bindgen::prelude::*;
use wasm_bindgen::JsCast;
use web_sys::{CloseEvent, MessageEvent, WebSocket};

use crate::error::SyncError;
use crate::sync::{Message, Transport};

pub struct WsTransport {
    ws: WebSocket,
    rx: mpsc::UnboundedReceiver<Result<Message, SyncError>>,
    _on_message: Closure<dyn FnMut(MessageEvent)>,
    _on_close: Closure<dyn FnMut(CloseEvent)>,
    _on_error: Closure<dyn FnMut(web_sys::Event)>,
}

impl WsTransport {
    /// Opens a WebSocket to `url` and waits until it is open (or fails).
    pub async fn connect(url: &str) -> Result<WsTransport, SyncError> {
        let ws = WebSocket::new(url).map_err(|e| SyncError::Connection(format!("cannot open {url}: {e:?}")))?;
        let (tx, rx) = mpsc::unbounded::<Result<Message, SyncError>>();
        let (open_tx, open_rx) = oneshot::channel::<Result<(), String>>();
        let open_tx = std::rc::Rc::new(std::cell::RefCell::new(Some(open_tx)));

        let tx_msg = tx.clone();
        let on_message = Closure::<dyn FnMut(MessageEvent)>::new(move |e: MessageEvent| {
            match crate::idb::codec::text_of(&e.data()) {
                Some(text) => {
                    let _ = tx_msg.unbounded_send(Message::decode(&text).map_err(SyncError::Protocol));
                }
                // The protocol is text only: a binary frame ends the connection.
                None => tx_msg.close_channel(),
            }
        });
        let tx_close = tx.clone();
        let open_close = open_tx.clone();
        let on_close = Closure::<dyn FnMut(CloseEvent)>::new(move |e: CloseEvent| {
            tx_close.close_channel();
            if let Some(o) = open_close.borrow_mut().take() {
                let _ = o.send(Err(format!("closed before opening (code {})", e.code())));
            }
        });
        let open_err = open_tx.clone();
        let on_error = Closure::<dyn FnMut(web_sys::Event)>::new(move |_e: web_sys::Event| {
            if let Some(o) = open_err.borrow_mut().take() {
                let _ = o.send(Err("connection failed".into()));
            }
        });
        let on_open = Closure::once_into_js(move || {
            if let Some(o) = open_tx.borrow_mut().take() {
                let _ = o.send(Ok(()));
            }
        });
        ws.set_onmessage(Some(on_message.as_ref().unchecked_ref()));
        ws.set_onclose(Some(on_close.as_ref().unchecked_ref()));
        ws.set_onerror(Some(on_error.as_ref().unchecked_ref()));
        ws.set_onopen(Some(on_open.unchecked_ref()));
        let transport = WsTransport { ws, rx, _on_message: on_message, _on_close: on_close, _on_error: on_error };
        match open_rx.await {
            Ok(Ok(())) => Ok(transport),
            Ok(Err(e)) => Err(SyncError::Connection(format!("{url}: {e}"))),
            Err(_) => Err(SyncError::Connection(format!("{url}: connection dropped"))),
        }
    }
}

impl Drop for WsTransport {
    fn drop(&mut self) {
        self.ws.set_onmessage(None);
        self.ws.set_onclose(None);
        self.ws.set_onerror(None);
        let _ = self.ws.close();
    }
}

impl Transport for WsTransport {
    async fn send(&mut self, msg: &Message) -> Result<(), SyncError> {
        if self.ws.ready_state() != WebSocket::OPEN {
            return Err(SyncError::Connection("the connection is closed".into()));
        }
        self.ws.send_with_str(&msg.encode()).map_err(|e| SyncError::Connection(format!("send failed: {e:?}")))
    }

    async fn recv(&mut self) -> Result<Message, SyncError> {
        self.rx.next().await.ok_or_else(|| SyncError::Connection("the server closed the connection".into()))?
    }
}

/// Resolves after `ms` milliseconds (window or worker).
pub async fn sleep(ms: u32) {
    let promise = js_sys::Promise::new(&mut |resolve, _| {
        let global = js_sys::global();
        if let Ok(set_timeout) = js_sys::Reflect::get(&global, &"setTimeout".into()) {
            if let Some(f) = set_timeout.dyn_ref::<js_sys::Function>() {
                let _ = f.call2(&global, &resolve, &JsValue::from(ms));
            }
        }
    });
    let _ = wasm_bindgen_futures::JsFuture::from(promise).await;
}
