//! The servers corral knows by name, and the commands that cannot work
//! with them in a mode: refused at start with the command to write
//! instead, rather than left to crash-loop (a second Uvicorn binding
//! 127.0.0.1:8000 itself) or to serve where no request goes. Pure: it
//! reads the command's words and the mode. A server not named here is
//! taken as written.

use std::path::Path;

use super::SOCKET_PLACEHOLDER;

/// Why `command` (program first) cannot serve in the mode, and what to
/// write instead; `None` when nothing is known against it.
pub fn refusal(command: &[String], proxy: bool) -> Option<String> {
    let program = Path::new(command.first()?).file_name()?.to_str()?;
    let args = &command[1..];
    let has = |placeholder: &str| args.iter().any(|a| a.contains(placeholder));
    let fd = has("{fd");
    let socket = has(SOCKET_PLACEHOLDER);
    match program {
        "granian" if !proxy => Some(
            "Granian cannot take an inherited listener (it has no --fd and ignores LISTEN_FDS): \
             run it in proxy mode, `corral run --proxy -- granian --uds {socket} ...`"
                .into(),
        ),
        "granian" if !socket => Some(
            "Granian binds the address it is given: give it its worker socket, \
             `granian --uds {socket} ...`"
                .into(),
        ),
        "uvicorn" if !fd && !socket => Some(
            "Uvicorn ignores LISTEN_FDS and would bind 127.0.0.1:8000 itself in every worker: \
             give it the listener, `uvicorn --fd {fd} ...`"
                .into(),
        ),
        "hypercorn" if !fd && !socket => Some(
            "Hypercorn ignores LISTEN_FDS and would bind 127.0.0.1:8000 itself in every worker: \
             give it the listener, `hypercorn --bind fd://{fd} ...`"
                .into(),
        ),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(line: &str) -> Vec<String> {
        line.split_whitespace().map(str::to_string).collect()
    }

    #[test]
    fn granian_is_refused_in_shared_mode_and_needs_its_socket_in_proxy_mode() {
        let uds = words("/venv/bin/granian --interface wsgi --uds {socket} app:app");
        assert!(refusal(&uds, true).is_none());
        let shared = refusal(&uds, false).unwrap();
        assert!(shared.contains("--proxy"), "{shared}");
        let own_port = refusal(&words("granian --interface asgi app:app"), true).unwrap();
        assert!(own_port.contains("--uds {socket}"), "{own_port}");
    }

    #[test]
    fn uvicorn_and_hypercorn_need_their_listener_named() {
        for proxy in [false, true] {
            let bare = refusal(&words("uvicorn app:app"), proxy).unwrap();
            assert!(bare.contains("--fd {fd}"), "{bare}");
            let bare = refusal(&words("hypercorn app:app"), proxy).unwrap();
            assert!(bare.contains("fd://{fd}"), "{bare}");
            assert!(refusal(&words("uvicorn --fd {fd} app:app"), proxy).is_none());
            assert!(refusal(&words("hypercorn -b fd://{fd} app:app"), proxy).is_none());
        }
        assert!(refusal(&words("uvicorn --uds {socket} app:app"), true).is_none());
    }

    #[test]
    fn gunicorn_and_unknown_servers_are_taken_as_written() {
        for proxy in [false, true] {
            assert!(refusal(&words("gunicorn app:app"), proxy).is_none());
            assert!(refusal(&words("gunicorn -b fd://{fd} app:app"), proxy).is_none());
            assert!(refusal(&words("./my-server --port 8000"), proxy).is_none());
        }
        assert!(refusal(&[], false).is_none());
    }
}
