-- (TimescaleDB only) Is raw table $1 a hypertable?
SELECT EXISTS (SELECT 1 FROM timescaledb_information.hypertables
               WHERE hypertable_schema = current_schema() AND hypertable_name = $1)
