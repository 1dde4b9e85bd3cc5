"""The system of record (durable, transactional) behind one interface, :class:`RecordStore`
(``records/base.py``): SQLite by default (embedded, one file per cube), PostgreSQL for cubes shared by many
workers and hosts (``records/postgres.py``, the ``[postgres]`` extra, imported only when used)."""

from .base import CompiledFilter, IndexRow, RecordStore
from .migrate import copy_records, is_store_url, open_record_store
from .sqlite import RECORDS_SCHEMA_VERSION, SQLiteRecordStore

__all__ = ["RecordStore", "CompiledFilter", "IndexRow", "SQLiteRecordStore", "RECORDS_SCHEMA_VERSION",
           "open_record_store", "copy_records", "is_store_url"]
