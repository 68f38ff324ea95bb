"""The dev and ops tools around the server: the `wxhook` command line, `check`, `simulate`,
the rules and menu commands, and the sandbox (a local stand-in for the WeChat API)."""
