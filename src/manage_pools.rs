//! The `pool-*` and `vol-*` verbs.

use std::error::Error;
use std::path::Path;

use serde_json::{json, Value};

use crate::manage::{call, human, Verb};

pub fn run(socket: &Path, verb: Verb) -> Result<i32, Box<dyn Error>> {
    let c = |method: &str, path: &str, body: Option<Value>| call(socket, method, path, body);
    match verb {
        Verb::PoolDefine { name, path, kind } => {
            let path = std::path::absolute(&path)?;
            c("POST", "/pools", Some(json!({ "name": name, "type": kind, "path": path })))?;
            println!("pool {name} defined");
        }
        Verb::PoolBuild { name } => {
            c("POST", &format!("/pools/{name}/build"), None)?;
            println!("pool {name} built");
        }
        Verb::PoolStart { name } => {
            c("POST", &format!("/pools/{name}/start"), None)?;
            println!("pool {name} started");
        }
        Verb::PoolList => {
            println!("{:<16} {:<8} {:<8} PATH", "NAME", "STATE", "VOLUMES");
            for p in c("GET", "/pools", None)?.as_array().into_iter().flatten() {
                let state = if p["active"].as_bool() == Some(true) { "active" } else { "inactive" };
                println!("{:<16} {state:<8} {:<8} {}", s(p, "name"), p["volumes"], s(p, "path"));
            }
        }
        Verb::PoolInfo { name } => {
            let p = c("GET", &format!("/pools/{name}"), None)?;
            println!("name       {}", s(&p, "name"));
            println!("type       {}", s(&p, "type"));
            println!("path       {}", s(&p, "path"));
            println!(
                "state      {}",
                if p["active"].as_bool() == Some(true) { "active" } else { "inactive" }
            );
            println!("built      {}", if p["built"].as_bool() == Some(true) { "yes" } else { "no" });
            println!("volumes    {}", p["volumes"]);
            println!("capacity   {}", human(p["capacity"].as_u64().unwrap_or(0)));
            println!("available  {}", human(p["available"].as_u64().unwrap_or(0)));
        }
        Verb::PoolDelete { name } => {
            c("DELETE", &format!("/pools/{name}"), None)?;
            println!("pool {name} deleted");
        }
        Verb::VolCreate { name, size, pool, format } => {
            c(
                "POST",
                &format!("/pools/{pool}/volumes"),
                Some(json!({ "name": name, "size": size, "format": format })),
            )?;
            println!("volume {pool}/{name} created");
        }
        Verb::VolList { pool } => {
            println!("{:<24} {:<6} {:>12} {:>12}", "NAME", "FORMAT", "CAPACITY", "ALLOCATION");
            for v in c("GET", &format!("/pools/{pool}/volumes"), None)?.as_array().into_iter().flatten() {
                println!(
                    "{:<24} {:<6} {:>12} {:>12}",
                    s(v, "name"),
                    s(v, "format"),
                    human(v["capacity"].as_u64().unwrap_or(0)),
                    human(v["allocation"].as_u64().unwrap_or(0))
                );
            }
        }
        Verb::VolInfo { name, pool } => {
            print_volume(&c("GET", &format!("/pools/{pool}/volumes/{name}"), None)?)
        }
        Verb::VolResize { name, size, pool } => {
            let v =
                c("POST", &format!("/pools/{pool}/volumes/{name}/resize"), Some(json!({ "size": size })))?;
            println!("volume {pool}/{name} resized to {}", human(v["capacity"].as_u64().unwrap_or(0)));
        }
        Verb::VolClone { name, new_name, pool, overlay } => {
            c(
                "POST",
                &format!("/pools/{pool}/volumes/{name}/clone"),
                Some(json!({ "name": new_name, "overlay": overlay })),
            )?;
            let how = if overlay { "an overlay of" } else { "a copy of" };
            println!("volume {pool}/{new_name} created as {how} {name}");
        }
        Verb::VolDelete { name, pool } => {
            c("DELETE", &format!("/pools/{pool}/volumes/{name}"), None)?;
            println!("volume {pool}/{name} deleted");
        }
        Verb::VolImport { file, pool, name } => {
            let file = std::path::absolute(&file)?;
            let v = c("POST", &format!("/pools/{pool}/import"), Some(json!({ "file": file, "name": name })))?;
            println!("volume {pool}/{} imported", s(&v, "name"));
        }
        Verb::NetDefine { name, kind, address, bridge } => {
            c(
                "POST",
                "/networks",
                Some(json!({ "name": name, "type": kind, "address": address, "bridge": bridge })),
            )?;
            println!("network {name} defined");
        }
        Verb::NetStart { name } => {
            c("POST", &format!("/networks/{name}/start"), None)?;
            println!("network {name} started");
        }
        Verb::NetStop { name } => {
            c("POST", &format!("/networks/{name}/stop"), None)?;
            println!("network {name} stopped");
        }
        Verb::NetDelete { name } => {
            c("DELETE", &format!("/networks/{name}"), None)?;
            println!("network {name} deleted");
        }
        Verb::NetList => {
            println!("{:<16} {:<9} {:<8} {:<16} ADDRESS", "NAME", "TYPE", "STATE", "BRIDGE");
            for n in c("GET", "/networks", None)?.as_array().into_iter().flatten() {
                let state = if n["active"].as_bool() == Some(true) { "active" } else { "inactive" };
                println!(
                    "{:<16} {:<9} {state:<8} {:<16} {}",
                    s(n, "name"),
                    s(n, "type"),
                    s(n, "bridge"),
                    s(n, "address")
                );
            }
        }
        Verb::NetInfo { name } => {
            let n = c("GET", &format!("/networks/{name}"), None)?;
            for key in ["name", "type", "bridge", "address"] {
                println!("{key:<9}  {}", s(&n, key));
            }
            println!(
                "state      {}",
                if n["active"].as_bool() == Some(true) { "active" } else { "inactive" }
            );
        }
        Verb::NetLeases { name } => {
            println!("{:<17} {:<15} HOSTNAME", "MAC", "IP");
            for l in c("GET", &format!("/networks/{name}/leases"), None)?.as_array().into_iter().flatten() {
                println!("{:<17} {:<15} {}", s(l, "mac"), s(l, "ip"), s(l, "hostname"));
            }
        }
        _ => return Err("not a pool, volume or network command".into()),
    }
    Ok(0)
}

fn s(v: &Value, key: &str) -> String {
    v[key].as_str().unwrap_or("-").to_string()
}

fn print_volume(v: &Value) {
    println!("name        {}", s(v, "name"));
    println!("pool        {}", s(v, "pool"));
    println!("path        {}", s(v, "path"));
    println!("format      {}", s(v, "format"));
    println!("capacity    {} ({} bytes)", human(v["capacity"].as_u64().unwrap_or(0)), v["capacity"]);
    println!("allocation  {} ({} bytes)", human(v["allocation"].as_u64().unwrap_or(0)), v["allocation"]);
    if let Some(b) = v["backing"].as_str() {
        println!("backing     {b}");
    }
}
