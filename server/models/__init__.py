"""The model registry (versions, the active one, loaded engines) and the ONNX graph a version
serves (`/v1/models/{version}/onnx`)."""
