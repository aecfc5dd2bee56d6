"""Production backends (Amazon Bedrock, Amazon OpenSearch) behind the Serve deployments."""
