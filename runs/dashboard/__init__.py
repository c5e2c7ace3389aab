"""The htmx dashboard: server-rendered pages whose live parts are partials that htmx polls."""
