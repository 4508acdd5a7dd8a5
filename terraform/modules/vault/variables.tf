variable "permissions" {
  description = "The decoded output of `rotator permissions --format json` (format rotator-permissions/v1). Its vault.policy_hcl becomes the Vault policy, verbatim."
  type = object({
    format = string
    vault = object({
      policy_hcl = string
      paths = list(object({
        path         = string
        capabilities = list(string)
      }))
    })
  })

  validation {
    condition     = var.permissions.format == "rotator-permissions/v1"
    error_message = "The permissions document must have format \"rotator-permissions/v1\" (the output of `rotator permissions --format json`)."
  }

  validation {
    condition     = length(trimspace(var.permissions.vault.policy_hcl)) > 0
    error_message = "permissions.vault.policy_hcl is empty."
  }

  validation {
    condition = alltrue(flatten([
      for p in var.permissions.vault.paths : [for c in p.capabilities : contains(["create", "read", "update", "patch", "delete", "list"], c)]
    ]))
    error_message = "A path in permissions.vault.paths has a capability rotator never needs (sudo, deny, root, ...)."
  }
}

variable "policy_name" {
  description = "Name of the Vault policy, the only policy rotator's tokens get."
  type        = string
  default     = "rotator"

  validation {
    condition     = can(regex("^[a-z0-9][a-z0-9_-]*$", var.policy_name))
    error_message = "The policy name holds lowercase letters, digits, '-' and '_'."
  }
}

variable "namespace" {
  description = "Vault Enterprise namespace of the policy and the roles (null: the provider's)."
  type        = string
  default     = null
}

variable "token_ttl" {
  description = "TTL in seconds of the tokens rotator logs in for; `serve` renews them and logs in again when renewal stops extending them."
  type        = number
  default     = 3600

  validation {
    condition     = var.token_ttl >= 300
    error_message = "Give tokens at least 300 seconds: rotator renews at two thirds of the TTL."
  }
}

variable "token_max_ttl" {
  description = "Maximum lifetime in seconds of rotator's tokens, renewals included."
  type        = number
  default     = 14400

  # That it is at least token_ttl is checked by a precondition in main.tf: a validation may
  # refer to other variables only from Terraform 1.9 on.
  validation {
    condition     = var.token_max_ttl >= 300
    error_message = "Give tokens a maximum lifetime of at least 300 seconds."
  }
}

variable "aws_auth" {
  description = "Creates a role on Vault's AWS auth method (IAM type) for rotator, bound to its IAM role (the ECS task role from the aws module). Null: none."
  type = object({
    mount                    = optional(string, "aws")
    role                     = optional(string, "rotator")
    bound_iam_principal_arns = list(string)
    resolve_aws_unique_ids   = optional(bool, true)
  })
  default = null

  validation {
    condition     = var.aws_auth == null || try(length(var.aws_auth.bound_iam_principal_arns) > 0, false)
    error_message = "Bind the AWS auth role to at least one IAM principal ARN."
  }

  validation {
    condition     = var.aws_auth == null || alltrue([for arn in try(var.aws_auth.bound_iam_principal_arns, []) : !strcontains(arn, "*")])
    error_message = "Bind the AWS auth role to exact IAM principals, without wildcards."
  }
}

variable "kubernetes_auth" {
  description = "Creates a role on Vault's Kubernetes auth method for rotator's service account (deploy/kubernetes). With `audience`, only tokens projected for that audience log in. Null: none."
  type = object({
    mount                            = optional(string, "kubernetes")
    role                             = optional(string, "rotator")
    bound_service_account_names      = optional(list(string), ["rotator"])
    bound_service_account_namespaces = list(string)
    audience                         = optional(string, "vault")
  })
  default = null

  validation {
    condition     = var.kubernetes_auth == null || alltrue([for n in concat(try(var.kubernetes_auth.bound_service_account_names, []), try(var.kubernetes_auth.bound_service_account_namespaces, [])) : n != "*"])
    error_message = "Bind the Kubernetes auth role to named service accounts in named namespaces, not \"*\"."
  }

  validation {
    condition     = var.kubernetes_auth == null || try(length(var.kubernetes_auth.bound_service_account_namespaces) > 0, false)
    error_message = "Bind the Kubernetes auth role to at least one namespace."
  }
}

variable "jwt_auth" {
  description = "Creates a role (role_type jwt) on Vault's JWT auth method for rotator, e.g. for a workload identity token. Null: none."
  type = object({
    mount           = optional(string, "jwt")
    role            = optional(string, "rotator")
    bound_audiences = list(string)
    bound_subject   = optional(string)
    bound_claims    = optional(map(string), {})
    user_claim      = optional(string, "sub")
  })
  default = null

  validation {
    condition     = var.jwt_auth == null || try(length(var.jwt_auth.bound_audiences) > 0, false)
    error_message = "Bind the JWT auth role to at least one audience."
  }

  validation {
    condition     = var.jwt_auth == null || try(var.jwt_auth.bound_subject != null || length(var.jwt_auth.bound_claims) > 0, false)
    error_message = "Bind the JWT auth role to a subject or to claims: an audience alone admits every workload of the issuer."
  }
}

variable "approle_auth" {
  description = "Creates a role on Vault's AppRole auth method for rotator. `secret_id_num_uses` 0 is the default because rotator logs in again (reading its secret ID file) whenever its token can no longer be renewed; limit the secret ID's life with `secret_id_ttl` and its origin with the CIDR lists. Null: none."
  type = object({
    mount                 = optional(string, "approle")
    role                  = optional(string, "rotator")
    secret_id_num_uses    = optional(number, 0)
    secret_id_ttl         = optional(number, 2592000)
    secret_id_bound_cidrs = optional(list(string), [])
    token_bound_cidrs     = optional(list(string), [])
  })
  default = null

  validation {
    condition     = var.approle_auth == null || try(var.approle_auth.secret_id_num_uses >= 0 && var.approle_auth.secret_id_ttl >= 0, false)
    error_message = "secret_id_num_uses and secret_id_ttl are not negative."
  }

  validation {
    condition     = var.approle_auth == null || alltrue([for c in concat(try(var.approle_auth.secret_id_bound_cidrs, []), try(var.approle_auth.token_bound_cidrs, [])) : can(cidrhost(c, 0))])
    error_message = "The bound CIDR lists hold CIDR blocks such as 10.0.0.0/16."
  }
}
