"""One call: the pure state machine (`machine`), what it asks for (`commands`), and the
runner that does the I/O and owns the call's cleanup (`runner`)."""
