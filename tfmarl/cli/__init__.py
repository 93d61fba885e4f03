"""Command line interface (`tfmarl ...`)."""
