"""The OpenAI wire protocol (msgspec structs and the error body): the types both the gateway and the
engines speak, below both so that imports only point down."""
