"""Repository context: the workspace index (SQLite, FTS5) and what it retrieves for a cursor."""
