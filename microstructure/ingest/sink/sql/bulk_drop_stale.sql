-- The tables in microstructure_load no live loader holds (a killed load's), dropped: their names.
SELECT microstructure_drop_stale_load_tables() AS name
