//! The `msg` object of `websocket_message(flow, msg)`: one whole WebSocket message.
//!
//! `msg.type` (`"text"` or `"binary"`), `msg.content` (a string; assigning one changes
//! what is sent), `msg.from_client` (a boolean) and `msg:drop()` (the message is not
//! forwarded, and the handlers after this one do not see it). The object reads the
//! message of its event; kept past it, it reads that message still, and changes to it
//! no longer matter.

use std::cell::RefCell;
use std::rc::Rc;

use bytes::Bytes;
use mlua::{UserData, UserDataFields, UserDataMethods};

use crate::plugin::WsKind;

/// One message as the handlers of its event see and change it.
pub(crate) struct MsgState {
    pub(crate) kind: WsKind,
    pub(crate) content: Bytes,
    pub(crate) from_client: bool,
    pub(crate) dropped: bool,
}

/// `msg`.
pub(crate) struct Msg(pub(crate) Rc<RefCell<MsgState>>);

impl UserData for Msg {
    fn add_fields<F: UserDataFields<Self>>(fields: &mut F) {
        fields.add_field_method_get("type", |_, this| Ok(this.0.borrow().kind.as_str()));
        fields.add_field_method_get("from_client", |_, this| Ok(this.0.borrow().from_client));
        fields.add_field_method_get("content", |lua, this| {
            lua.create_string(&this.0.borrow().content)
        });
        fields.add_field_method_set("content", |_, this, content: mlua::String| {
            this.0.borrow_mut().content = Bytes::copy_from_slice(&content.as_bytes());
            Ok(())
        });
    }

    fn add_methods<M: UserDataMethods<Self>>(methods: &mut M) {
        methods.add_method("drop", |_, this, ()| {
            this.0.borrow_mut().dropped = true;
            Ok(())
        });
    }
}
