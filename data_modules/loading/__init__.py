"""Reading the UserU data set: the work plan, the streaming dataset, collation, the DataModules."""
