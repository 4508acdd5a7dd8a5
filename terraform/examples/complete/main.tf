provider "aws" {
  region = var.region
}

# Credentials come from the environment (VAULT_TOKEN, or the provider's auth_login block).
provider "vault" {
  address = var.vault_address
}

locals {
  # `rotator permissions --policies ../../../policies --format json`, committed; a test fails when
  # it no longer matches the policy files.
  permissions = jsondecode(file("${path.module}/permissions.json"))

  tags = {
    project = "rotator"
    example = "complete"
  }
}

module "rotator_aws" {
  source = "../../modules/aws"

  name        = "rotator"
  permissions = local.permissions
  tags        = local.tags

  runtime = var.runtime
  image   = var.image

  cluster_arn        = var.cluster_arn
  subnet_ids         = var.subnet_ids
  security_group_ids = var.security_group_ids

  database_url_secret_arn = var.database_url_secret_arn
  api_token_secret_arn    = var.api_token_secret_arn
  secrets = {
    TOKTRA_CLIENT_SECRET = var.toktra_client_secret_arn
  }
  environment = {
    TOKTRA_CLIENT_ID = var.toktra_client_id
    VAULT_ADDR       = var.vault_address
    # The image's rotator.toml selects Vault's AWS auth ([vault.aws] role = "rotator").
    ROTATOR_CONFIG = "/etc/rotator/rotator.toml"
  }

  # The API behind an existing ALB listener, only when both are given.
  load_balancer = var.vpc_id == null || var.listener_arn == null ? null : {
    vpc_id       = var.vpc_id
    listener_arn = var.listener_arn
  }
}

module "rotator_vault" {
  source = "../../modules/vault"

  permissions = local.permissions

  # rotator on ECS logs in with its task role ...
  aws_auth = {
    bound_iam_principal_arns = [module.rotator_aws.task_role_arn]
  }

  # ... and on Kubernetes (deploy/kubernetes) with its service account's projected token.
  kubernetes_auth = {
    bound_service_account_namespaces = ["rotator"]
  }
}
