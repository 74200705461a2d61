"""Test support: stand-in ONNX models with the real models' signatures."""
