"""The paper's measure of a refiner: an estimator trained on some labelled data and tested on
labelled real data, through one pipeline for every workload (``pipeline``)."""
