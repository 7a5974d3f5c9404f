"""The REST API: the same engine and backends the local CLI uses, over HTTP, with users and roles."""
