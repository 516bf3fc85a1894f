-- Runs once, when the data volume is empty: the Airflow metadata DB beside MLflow's (POSTGRES_DB creates mlflow).
CREATE DATABASE airflow;
