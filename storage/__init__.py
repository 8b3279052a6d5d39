"""Where bytes live: local paths and every Beam filesystem (gs://, s3://, ...), with one meaning for errors.

The bottom of the house. `storage.paths` is pure Python (the decoder uses it); `storage.objects`
opens objects through Beam's FileSystems and says what a store's error means: each client raises
its own type for a missing object (google.api_core's NotFound, Beam's S3ClientError with code
404), which here becomes FileNotFoundError, as a missing local file is.
"""
