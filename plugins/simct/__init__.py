"""SimCT: are two development stages of an LLM service still consistent? Response-pair features, a LightGBM
response-wise classifier, model-wise t-tests with an equivalence test, and a gate (`simct/gate`, `omnimm simct`)."""
