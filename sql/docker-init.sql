-- Run once by the postgres container of docker-compose.yml: the ledger gets a database and user
-- of its own, apart from Airflow's metadata database. `taisu-etl db upgrade` creates the tables.
CREATE USER taisu WITH PASSWORD 'taisu';
CREATE DATABASE taisu OWNER taisu;
