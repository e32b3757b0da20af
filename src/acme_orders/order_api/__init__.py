"""Order API: accepts orders over HTTP and writes them, with their OrderPlaced event, in one
transaction."""
