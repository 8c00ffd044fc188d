"""Reading the UserU data set for training. In: a built, encoded data set. Out: the work plan,
the streaming dataset, collation and the LightningDataModules."""
