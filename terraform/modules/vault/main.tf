locals {
  # Every role gives rotator's tokens this policy and nothing else: the policy carries what rotator
  # itself needs (renew-self, lookup-self, capabilities-self), so Vault's `default` policy is off.
  token_policies = [vault_policy.this.name]
}

# The policy text is `rotator permissions`' own, verbatim: what the policy files need, no more.
resource "vault_policy" "this" {
  namespace = var.namespace
  name      = var.policy_name
  policy    = var.permissions.vault.policy_hcl

  lifecycle {
    precondition {
      condition     = var.token_max_ttl >= var.token_ttl
      error_message = "token_max_ttl (${var.token_max_ttl}) must be at least token_ttl (${var.token_ttl})."
    }
  }
}

################################################################################
# AWS auth (IAM): rotator on ECS logs in with its task role
################################################################################

resource "vault_aws_auth_backend_role" "this" {
  count = var.aws_auth == null ? 0 : 1

  namespace                = var.namespace
  backend                  = var.aws_auth.mount
  role                     = var.aws_auth.role
  auth_type                = "iam"
  bound_iam_principal_arns = var.aws_auth.bound_iam_principal_arns
  resolve_aws_unique_ids   = var.aws_auth.resolve_aws_unique_ids

  token_policies          = local.token_policies
  token_no_default_policy = true
  token_ttl               = var.token_ttl
  token_max_ttl           = var.token_max_ttl
}

################################################################################
# Kubernetes auth: rotator's service account (deploy/kubernetes)
################################################################################

resource "vault_kubernetes_auth_backend_role" "this" {
  count = var.kubernetes_auth == null ? 0 : 1

  namespace                        = var.namespace
  backend                          = var.kubernetes_auth.mount
  role_name                        = var.kubernetes_auth.role
  bound_service_account_names      = var.kubernetes_auth.bound_service_account_names
  bound_service_account_namespaces = var.kubernetes_auth.bound_service_account_namespaces
  audience                         = var.kubernetes_auth.audience

  token_policies          = local.token_policies
  token_no_default_policy = true
  token_ttl               = var.token_ttl
  token_max_ttl           = var.token_max_ttl
}

################################################################################
# JWT auth (e.g. a workload identity token)
################################################################################

resource "vault_jwt_auth_backend_role" "this" {
  count = var.jwt_auth == null ? 0 : 1

  namespace       = var.namespace
  backend         = var.jwt_auth.mount
  role_name       = var.jwt_auth.role
  role_type       = "jwt"
  bound_audiences = var.jwt_auth.bound_audiences
  bound_subject   = var.jwt_auth.bound_subject
  bound_claims    = length(var.jwt_auth.bound_claims) > 0 ? var.jwt_auth.bound_claims : null
  user_claim      = var.jwt_auth.user_claim

  token_policies          = local.token_policies
  token_no_default_policy = true
  token_ttl               = var.token_ttl
  token_max_ttl           = var.token_max_ttl
}

################################################################################
# AppRole auth
################################################################################

resource "vault_approle_auth_backend_role" "this" {
  count = var.approle_auth == null ? 0 : 1

  namespace             = var.namespace
  backend               = var.approle_auth.mount
  role_name             = var.approle_auth.role
  bind_secret_id        = true
  secret_id_num_uses    = var.approle_auth.secret_id_num_uses
  secret_id_ttl         = var.approle_auth.secret_id_ttl
  secret_id_bound_cidrs = length(var.approle_auth.secret_id_bound_cidrs) > 0 ? var.approle_auth.secret_id_bound_cidrs : null

  token_policies          = local.token_policies
  token_no_default_policy = true
  token_ttl               = var.token_ttl
  token_max_ttl           = var.token_max_ttl
  token_bound_cidrs       = length(var.approle_auth.token_bound_cidrs) > 0 ? var.approle_auth.token_bound_cidrs : null
}
