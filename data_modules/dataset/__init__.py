"""The UserU data set's own format, shared by the stage that writes it (build) and those that
read it (encode, loading, the model's jobs): shard/vocabulary/benchmark schemas, the manifest with
checksums, the tokenizer file, the validation carve."""
