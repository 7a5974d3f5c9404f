"""Build state in a relational database: SQLite for the local profile, PostgreSQL in production."""
