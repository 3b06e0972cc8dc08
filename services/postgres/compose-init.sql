-- docker-compose.yml only: runs once when the postgres container's data volume is created.
-- (scripts/services.sh does the same with psql against its private cluster.)
CREATE DATABASE cdc_ts OWNER cdc;
\connect cdc_ts
CREATE EXTENSION IF NOT EXISTS timescaledb;
