"""The export: an artifact's integer model as the graphs the runtimes load (graph surgery on the
published RVM graph: QDQ pairs for ONNX Runtime, one form per runtime, the ratio-1 special
case), cached per artifact by `engine.cache`. Nothing here runs a model; the runtimes beside
this package (`ort_engine`, `openvino_engine`, `torch_engine`) do."""
