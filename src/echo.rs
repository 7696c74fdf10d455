//! `corechat echo`: the bare WebSocket echo server the Autobahn cases run
//! against. It upgrades on any path, admits everyone and sends each message
//! back as it came, so the conformance run exercises exactly the reactor and
//! codec the chat uses.

use crate::app::{App, Port, Refusal};
use crate::bus::ConnRef;
use crate::http::{Request, Response};
use crate::ws::{self, OpCode};

pub struct EchoApp;

/// Echo connections carry no state.
pub struct NoSession;

/// Echo shards never talk to each other.
pub enum NoMsg {}

type EchoPort = dyn Port<NoMsg, NoSession>;

impl App for EchoApp {
    type Msg = NoMsg;
    type Session = NoSession;

    fn is_upgrade(&self, req: &Request) -> bool {
        req.upgrade_websocket
    }

    fn admission(&self) -> bool {
        false
    }

    fn authenticate(&mut self, _: &mut EchoPort, _: &Request) -> Result<Box<NoSession>, Refusal> {
        Ok(Box::new(NoSession))
    }

    fn on_open(&mut self, _: &mut EchoPort, _: usize) {}

    fn on_message(&mut self, port: &mut EchoPort, key: usize, opcode: OpCode, payload: &[u8]) {
        // Compressed for a client that negotiated permessage-deflate.
        port.send_shared(key, &ws::SharedFrame::new(ws::frame(opcode, payload)));
    }

    fn on_bus(&mut self, _: &mut EchoPort, msg: NoMsg) {
        match msg {}
    }

    fn on_http(&mut self, _: &mut EchoPort, _: usize, _: Request) -> Option<Response> {
        Some(Response::error(404, "not found"))
    }

    fn on_disconnect(&mut self, _: &mut EchoPort, _: usize, _: ConnRef, _: Box<NoSession>) {}

    fn end_of_turn(&mut self, _: &mut EchoPort) {}

    fn on_tick(&mut self, _: &mut EchoPort) {}

    fn unready_backend(&self) -> Option<&'static str> {
        None
    }

    fn expires_at(_: &NoSession) -> Option<u64> {
        None
    }

    fn accepts_input(_: &NoSession) -> bool {
        true
    }

    fn on_drained(&mut self, _: &mut EchoPort, _: usize) {}
}
