//! Engine errors become real JS `Error` objects carrying a stable `code`, so apps can
//! `catch (e) { if (e.code === 'NOT_FOUND') … }`.

use wasm_bindgen::JsValue;

use crate::error::Error;

pub fn to_js(err: Error) -> JsValue {
    js_error(err.code(), &err.to_string())
}

pub fn js_error(code: &str, message: &str) -> JsValue {
    let e = js_sys::Error::new(message);
    e.set_name("TidemarkError");
    // Setting a property on a fresh Error object cannot fail.
    let _ = js_sys::Reflect::set(&e, &"code".into(), &code.into());
    e.into()
}
