//! EC2 inside a tenant account: which regions the account has enabled, and its default VPCs, which a
//! serverless tenant never uses and security reviews flag. Only a default VPC nothing runs in is
//! removed: one with network interfaces (something is attached to it) or security groups besides its
//! default one (someone built on it) is kept and reported.

use aws_sdk_ec2::Client;
use aws_sdk_ec2::types::Filter;

use super::{Aws, AwsError};

/// Every action the default VPC sweep calls outside the DescribeRegions it starts with: what the
/// regions SCP lets vend's access role do in regions tenants may not use.
pub const DEFAULT_VPC_ACTIONS: [&str; 9] = [
    "ec2:DescribeVpcs",
    "ec2:DescribeNetworkInterfaces",
    "ec2:DescribeSecurityGroups",
    "ec2:DescribeInternetGateways",
    "ec2:DetachInternetGateway",
    "ec2:DeleteInternetGateway",
    "ec2:DescribeSubnets",
    "ec2:DeleteSubnet",
    "ec2:DeleteVpc",
];

pub struct Ec2 {
    aws: Aws,
    client: Client,
}

/// Whether a region is on for the account (EC2's `OptInStatus`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OptIn {
    /// Enabled for every account.
    NotRequired,
    OptedIn,
    NotOptedIn,
}

/// What became of one default VPC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VpcFate {
    Removed,
    /// Left in place, and why.
    Kept(String),
}

fn filter(name: &str, value: &str) -> Filter {
    Filter::builder().name(name).values(value).build()
}

impl Ec2 {
    /// EC2 as `aws` sees it: the account it acts in, in its region.
    pub fn new(aws: &Aws) -> Self {
        Self {
            aws: aws.clone(),
            client: Client::new(&aws.sdk),
        }
    }

    /// `region`'s opt-in status for the account, `None` if EC2 does not know the region.
    pub async fn opt_in(&self, region: &str) -> Result<Option<OptIn>, AwsError> {
        let out = self
            .aws
            .call(
                "ec2.DescribeRegions",
                self.client
                    .describe_regions()
                    .all_regions(true)
                    .region_names(region)
                    .send(),
            )
            .await?;
        Ok(out
            .regions()
            .iter()
            .find(|r| r.region_name() == Some(region))
            .map(|r| opt_in_of(r.opt_in_status())))
    }

    /// The regions enabled for the account. EC2 lists only those, and only in the caller's partition;
    /// both are checked as well, since an emulator lists every region of every partition.
    pub async fn enabled_regions(&self) -> Result<Vec<String>, AwsError> {
        let out = self
            .aws
            .call("ec2.DescribeRegions", self.client.describe_regions().send())
            .await?;
        let own = self.aws.sdk.region().map(|r| partition(r.as_ref()));
        Ok(out
            .regions()
            .iter()
            .filter(|r| opt_in_of(r.opt_in_status()) != OptIn::NotOptedIn)
            .filter_map(|r| r.region_name())
            .filter(|r| own.is_none_or(|p| partition(r) == p))
            .map(str::to_owned)
            .collect())
    }

    /// The ids of this region's default VPCs (AWS makes at most one).
    pub async fn default_vpcs(&self) -> Result<Vec<String>, AwsError> {
        let out = self
            .aws
            .call(
                "ec2.DescribeVpcs",
                self.client
                    .describe_vpcs()
                    .filters(filter("is-default", "true"))
                    .send(),
            )
            .await?;
        Ok(out
            .vpcs()
            .iter()
            .filter(|v| v.is_default() == Some(true))
            .filter_map(|v| v.vpc_id().map(str::to_owned))
            .collect())
    }

    /// Removes the default VPC `vpc` with its internet gateways and subnets (its main route table,
    /// network ACL and default security group go with it), unless something uses it. A repeat after
    /// a crash half-way finds what is left and goes on.
    pub async fn remove_default_vpc(&self, vpc: &str) -> Result<VpcFate, AwsError> {
        let enis = self
            .aws
            .call(
                "ec2.DescribeNetworkInterfaces",
                self.client
                    .describe_network_interfaces()
                    .filters(filter("vpc-id", vpc))
                    .send(),
            )
            .await?;
        if !enis.network_interfaces().is_empty() {
            return Ok(VpcFate::Kept(format!(
                "{} network interface(s) attached",
                enis.network_interfaces().len()
            )));
        }
        let groups = self
            .aws
            .call(
                "ec2.DescribeSecurityGroups",
                self.client
                    .describe_security_groups()
                    .filters(filter("vpc-id", vpc))
                    .send(),
            )
            .await?;
        let extra = groups
            .security_groups()
            .iter()
            .filter(|g| g.group_name() != Some("default"))
            .count();
        if extra > 0 {
            return Ok(VpcFate::Kept(format!(
                "{extra} security group(s) besides the default one"
            )));
        }
        let gateways = self
            .aws
            .call(
                "ec2.DescribeInternetGateways",
                self.client
                    .describe_internet_gateways()
                    .filters(filter("attachment.vpc-id", vpc))
                    .send(),
            )
            .await?;
        for igw in gateways
            .internet_gateways()
            .iter()
            .filter_map(|g| g.internet_gateway_id())
        {
            gone(
                self.aws
                    .call(
                        "ec2.DetachInternetGateway",
                        self.client
                            .detach_internet_gateway()
                            .internet_gateway_id(igw)
                            .vpc_id(vpc)
                            .send(),
                    )
                    .await,
            )?;
            gone(
                self.aws
                    .call(
                        "ec2.DeleteInternetGateway",
                        self.client
                            .delete_internet_gateway()
                            .internet_gateway_id(igw)
                            .send(),
                    )
                    .await,
            )?;
        }
        let subnets = self
            .aws
            .call(
                "ec2.DescribeSubnets",
                self.client
                    .describe_subnets()
                    .filters(filter("vpc-id", vpc))
                    .send(),
            )
            .await?;
        for subnet in subnets.subnets().iter().filter_map(|s| s.subnet_id()) {
            gone(
                self.aws
                    .call(
                        "ec2.DeleteSubnet",
                        self.client.delete_subnet().subnet_id(subnet).send(),
                    )
                    .await,
            )?;
        }
        match self
            .aws
            .call("ec2.DeleteVpc", self.client.delete_vpc().vpc_id(vpc).send())
            .await
        {
            Ok(_) => Ok(VpcFate::Removed),
            // Something vend did not look for (an endpoint, a peering, a route table) holds it.
            Err(e) if e.code == "DependencyViolation" => Ok(VpcFate::Kept(e.message)),
            Err(e) => gone::<()>(Err(e)).map(|()| VpcFate::Removed),
        }
    }
}

/// The partition a region belongs to (regions of another partition answer other credentials).
fn partition(region: &str) -> &'static str {
    if region.starts_with("cn-") {
        "aws-cn"
    } else if region.starts_with("us-gov-") {
        "aws-us-gov"
    } else if region.starts_with("us-iso") {
        "aws-iso"
    } else if region.starts_with("eusc-") {
        "aws-eusc"
    } else {
        "aws"
    }
}

fn opt_in_of(status: Option<&str>) -> OptIn {
    match status {
        Some("not-opted-in") => OptIn::NotOptedIn,
        Some("opted-in") => OptIn::OptedIn,
        _ => OptIn::NotRequired,
    }
}

/// A delete of something already gone (an earlier attempt's) succeeded.
fn gone<T>(r: Result<T, AwsError>) -> Result<(), AwsError> {
    match r {
        Ok(_) => Ok(()),
        Err(e)
            if e.code.starts_with("InvalidVpcID.NotFound")
                || e.code.starts_with("InvalidSubnetID.NotFound")
                || e.code.starts_with("InvalidInternetGatewayID.NotFound")
                || e.code == "Gateway.NotAttached" =>
        {
            Ok(())
        }
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::ErrorClass;

    #[test]
    fn regions_are_on_unless_not_opted_in() {
        assert_eq!(opt_in_of(Some("opt-in-not-required")), OptIn::NotRequired);
        assert_eq!(opt_in_of(Some("opted-in")), OptIn::OptedIn);
        assert_eq!(opt_in_of(Some("not-opted-in")), OptIn::NotOptedIn);
        assert_eq!(opt_in_of(None), OptIn::NotRequired);
    }

    #[test]
    fn regions_belong_to_their_partition() {
        assert_eq!(partition("us-east-1"), "aws");
        assert_eq!(partition("eu-central-2"), "aws");
        assert_eq!(partition("us-gov-west-1"), "aws-us-gov");
        assert_eq!(partition("cn-northwest-1"), "aws-cn");
        assert_eq!(partition("us-isob-east-1"), "aws-iso");
    }

    #[test]
    fn deleting_what_is_gone_succeeds_and_nothing_else_does() {
        let e = |code: &str| AwsError::new(ErrorClass::Permanent, code, "x");
        for code in [
            "InvalidVpcID.NotFound",
            "InvalidSubnetID.NotFound",
            "InvalidInternetGatewayID.NotFound",
            "Gateway.NotAttached",
        ] {
            assert_eq!(gone::<()>(Err(e(code))), Ok(()), "{code}");
        }
        assert!(gone::<()>(Err(e("UnauthorizedOperation"))).is_err());
        assert!(gone::<()>(Err(e("DependencyViolation"))).is_err());
    }
}
