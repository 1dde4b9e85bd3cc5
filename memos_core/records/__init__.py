"""The system of record (durable, transactional). SQLite by default."""

from .sqlite import RECORDS_SCHEMA_VERSION, SQLiteRecordStore

__all__ = ["SQLiteRecordStore", "RECORDS_SCHEMA_VERSION"]
