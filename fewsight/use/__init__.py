"""The ways a trained model is used: loaded by name (`models`, with the models bundled in `bundled/`),
scored on test episodes (`evaluation`), adapted to a support set and asked about queries (`predict`),
exported as one small file (`export`, `onnx`) and drawn (`plot`). `fewsight serve` builds on these."""
