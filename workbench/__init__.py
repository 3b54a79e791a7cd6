"""The stemworker workbench: local Redis and S3, the KEDA ScaledJob emulator, the demo, model tools and a
generated sample song. It imports the worker (`function`); the worker never imports it, and the image does
not ship it."""
