"""The S3D MIL-NCE text-video model: network, stand-in export and the one loader.

Knows nothing of Beam. Import `load_s3d` from `s3d.loader`; it pulls in TensorFlow.
"""
