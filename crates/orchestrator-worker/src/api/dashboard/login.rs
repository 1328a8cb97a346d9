//! The login form (the token becomes an HttpOnly session cookie) and logout.

use axum::Form;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use maud::{Markup, PreEscaped, html};
use serde::Deserialize;

use super::page;
use crate::api::SharedState;
use crate::api::auth::{COOKIE, Scope};

pub(super) fn login_markup(error: Option<&str>) -> Markup {
    page(
        "Log in",
        None,
        html! {
            @if let Some(e) = error { p class="err" { (e) } }
            form id="login" method="post" action="/login" {
                label { "API token " input id="token" type="password" name="token" size="60" autocomplete="off"; }
                " "
                button id="login-button" type="submit" { "Log in" }
            }
            p { "The token is kept for this browser session only." }
            script { (PreEscaped(r#"
(function(){
  var f=document.getElementById('login'), t=document.getElementById('token');
  f.addEventListener('submit',function(){ try{sessionStorage.setItem('orchToken',t.value);}catch(e){} });
  var kept=null; try{kept=sessionStorage.getItem('orchToken');}catch(e){}
  if(kept && !document.querySelector('.err')){ t.value=kept; f.submit(); }
})();"#)) }
        },
    )
}

pub(super) async fn login_page() -> Html<String> {
    Html(login_markup(None).into_string())
}

#[derive(Deserialize)]
pub(super) struct LoginForm {
    token: String,
}

fn secure(state: &SharedState) -> &'static str {
    if state.section.tls.is_some() {
        "; Secure"
    } else {
        ""
    }
}

pub(super) async fn login(
    State(state): State<SharedState>,
    Form(form): Form<LoginForm>,
) -> Response {
    let token = form.token.trim();
    match state.tokens.check(token) {
        Some(entry) if entry.allows(Scope::Read) && !token.contains(';') => {
            tracing::info!(token = %entry.id, "dashboard login");
            let cookie = format!(
                "{COOKIE}={token}; Path=/; HttpOnly; SameSite=Strict{}",
                secure(&state)
            );
            let mut r = Redirect::to("/").into_response();
            if let Ok(v) = HeaderValue::from_str(&cookie) {
                r.headers_mut().insert(header::SET_COOKIE, v);
            }
            r
        }
        _ => {
            let body = login_markup(Some("That token is not valid.")).into_string();
            let mut r = (StatusCode::UNAUTHORIZED, Html(body)).into_response();
            // A stale token in sessionStorage must not log in again and again.
            r.headers_mut()
                .insert("clear-site-data", HeaderValue::from_static("\"storage\""));
            r
        }
    }
}

pub(super) async fn logout(State(state): State<SharedState>) -> Response {
    let cookie = format!(
        "{COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0{}",
        secure(&state)
    );
    let body = page(
        "Logged out",
        None,
        html! {
            p { a href="/login" { "Log in again" } }
            script { (PreEscaped("try{sessionStorage.removeItem('orchToken');}catch(e){}")) }
        },
    );
    let mut r = Html(body.into_string()).into_response();
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        r.headers_mut().insert(header::SET_COOKIE, v);
    }
    r
}
