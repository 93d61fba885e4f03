"""Export: versioned SavedModels with the `serving_default` contract TF Serving loads."""

from tfmarl.export.savedmodel import SIGNATURE_KEY, existing_versions, export_recommender, write_version

__all__ = ["SIGNATURE_KEY", "existing_versions", "export_recommender", "write_version"]
