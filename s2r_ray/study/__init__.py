"""Everything that touches Ray, Tune or MLflow: the driver (`driver`: the study's flow, top to
bottom), the typed units of work (`units`), a cell's tuner on Optuna (`tuner`, no Ray), the Tune
adapter (`scheduler`), what a worker runs (`work`), the pretrained-network store
(`pretrained`), the reducer actor (`reducer`), MLflow (`tracking`) and Ray Jobs submission
(`submit`). The rest of the package is pure and imports nothing from here."""
