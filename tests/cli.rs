//! The CLI against a real server, with expected output: apply/get/describe/delete on a
//! realistic multi-document manifest, and the bad-input cases (exit codes, kubectl wording,
//! nothing half-applied).

mod support;

use expect_test::expect;
use support::{Server, transcript};

/// The kind of manifest users write: a ConfigMap, a Deployment using it, a Service.
const APP: &str = r#"
apiVersion: v1
kind: ConfigMap
metadata:
  name: shop-config
  labels: {app: shop}
data:
  LOG_LEVEL: info
  FEATURES: "cart,checkout"
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: shop
  labels:
    app: shop
spec:
  replicas: 2
  selector:
    matchLabels:
      app: shop
  template:
    metadata:
      labels:
        app: shop
    spec:
      containers:
      - name: web
        image: registry.local/shop:2.1.0
        ports:
        - containerPort: 8080
          name: http
        envFrom:
        - configMapRef:
            name: shop-config
        readinessProbe:
          httpGet: {path: /healthz, port: http}
        resources:
          requests: {cpu: 100m, memory: 64Mi}
          limits: {memory: 128Mi}
---
apiVersion: v1
kind: Service
metadata:
  name: shop
  labels: {app: shop}
spec:
  type: NodePort
  clusterIP: 198.19.0.10
  selector:
    app: shop
  ports:
  - name: http
    port: 80
    targetPort: http
    nodePort: 30080
"#;

/// Replaces what changes from run to run (ages under 100 s keep their column width).
fn normalize(text: &str) -> String {
    let mut out = String::new();
    for line in text.lines() {
        let mut l = String::new();
        for (i, word) in line.split(' ').enumerate() {
            if i > 0 {
                l.push(' ');
            }
            let is_age = word.len() <= 3
                && word.ends_with('s')
                && word[..word.len() - 1].chars().all(|c| c.is_ascii_digit())
                && word.len() > 1;
            let is_time =
                word.len() == 20 && word.ends_with('Z') && word.as_bytes().get(10) == Some(&b'T');
            l.push_str(if is_age {
                "0s"
            } else if is_time {
                "<time>"
            } else {
                word
            });
        }
        out.push_str(&l);
        out.push('\n');
    }
    out
}

fn run(s: &Server, args: &[&str]) -> String {
    normalize(&transcript(&s.skiff(args, None)))
}

#[test]
fn apply_get_describe_delete() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = Server::start(dir.path());
    let app = dir.path().join("app.yaml");
    std::fs::write(&app, APP).expect("write manifest");
    let app = app.to_str().expect("utf8 path");

    expect![[r#"
        configmap/shop-config created
        deployment.apps/shop created
        service/shop created
        [exit 0]
    "#]]
    .assert_eq(&run(&s, &["apply", "-f", app]));
    expect![[r#"
        configmap/shop-config unchanged
        deployment.apps/shop unchanged
        service/shop unchanged
        [exit 0]
    "#]]
    .assert_eq(&run(&s, &["apply", "-f", app]));

    let changed = APP.replace("replicas: 2", "replicas: 4");
    expect![[r#"
        configmap/shop-config unchanged
        deployment.apps/shop configured
        service/shop unchanged
        [exit 0]
    "#]]
    .assert_eq(&normalize(&transcript(
        &s.skiff(&["apply", "-f", "-"], Some(&changed)),
    )));

    expect![[r#"
        NAME                   READY   UP-TO-DATE   AVAILABLE   AGE
        deployment.apps/shop   0/4     0            0           0s

        NAME           TYPE       CLUSTER-IP    EXTERNAL-IP   PORT(S)        AGE
        service/shop   NodePort   198.19.0.10   <none>        80:30080/TCP   0s

        NAME                    DATA   AGE
        configmap/shop-config   2      0s
        [exit 0]
    "#]]
    .assert_eq(&run(&s, &["get", "deploy,svc,cm"]));
    expect![[r#"
        NAME   READY   UP-TO-DATE   AVAILABLE   AGE   CONTAINERS   IMAGES                      SELECTOR
        shop   0/4     0            0           0s    web          registry.local/shop:2.1.0   app=shop
        [exit 0]
    "#]].assert_eq(&run(&s, &["get", "deployments", "-o", "wide"]));
    expect![[r#"
        NAME   TYPE       CLUSTER-IP    EXTERNAL-IP   PORT(S)        AGE   SELECTOR
        shop   NodePort   198.19.0.10   <none>        80:30080/TCP   0s    app=shop
        [exit 0]
    "#]]
    .assert_eq(&run(&s, &["get", "svc", "-o", "wide", "-l", "app=shop"]));
    expect![[r#"
        NAME              STATUS   AGE
        default           Active   0s
        kube-node-lease   Active   0s
        kube-public       Active   0s
        kube-system       Active   0s
        [exit 0]
    "#]]
    .assert_eq(&run(&s, &["get", "ns"]));
    expect![[r#"
        configmap/shop-config
        [exit 0]
    "#]]
    .assert_eq(&run(&s, &["get", "cm", "-A", "-o", "name"]));
    expect![[r#"
        [stderr]
        No resources found in default namespace.
        [exit 0]
    "#]]
    .assert_eq(&run(&s, &["get", "pods"]));
    expect![[r#"
        Name:                   shop
        Namespace:              default
        Labels:                 app=shop
        Annotations:            <none>
        CreationTimestamp:      <time>
        Selector:               app=shop
        Replicas:               4 desired | 0 updated | 0 total | 0 available | 0 unavailable
        StrategyType:           RollingUpdate
        MinReadySeconds:        0
        RollingUpdateStrategy:  25% max unavailable, 25% max surge
        Pod Template:
          Labels:  app=shop
          Containers:
            web:
              Image:        registry.local/shop:2.1.0
              Port:         8080/TCP
              Environment:  <none>
        Events:                 <none>
        [exit 0]
    "#]]
    .assert_eq(&run(&s, &["describe", "deployment", "shop"]));
    expect![[r#"
        Name:              shop
        Namespace:         default
        Labels:            app=shop
        Annotations:       <none>
        Selector:          app=shop
        Type:              NodePort
        IP Family Policy:  SingleStack
        IP:                198.19.0.10
        Port:              http  80/TCP
        TargetPort:        http/TCP
        NodePort:          http  30080/TCP
        Session Affinity:  None
        Events:            <none>
        [exit 0]
    "#]]
    .assert_eq(&run(&s, &["describe", "svc", "shop"]));
    expect![[r#"
        Name:         shop-config
        Namespace:    default
        Labels:       app=shop
        Annotations:  <none>

        Data
        ====
        FEATURES:
        ----
        cart,checkout

        LOG_LEVEL:
        ----
        info

        Events:       <none>
        [exit 0]
    "#]]
    .assert_eq(&run(&s, &["describe", "cm", "shop-config"]));

    let yaml = transcript(&s.skiff(&["get", "cm", "shop-config", "-o", "yaml"], None));
    assert!(yaml.contains("FEATURES: cart,checkout"), "{yaml}");
    assert!(yaml.contains("kind: ConfigMap"), "{yaml}");
    let json = s.skiff(&["get", "svc", "shop", "-o", "json"], None);
    let v: serde_json::Value = serde_json::from_slice(&json.stdout).expect("json output");
    assert_eq!(v["spec"]["ports"][0]["nodePort"], 30080);

    // `-o name` output is accepted by delete.
    expect![[r#"
        deployment.apps "shop" deleted
        service "shop" deleted
        [exit 0]
    "#]]
    .assert_eq(&run(
        &s,
        &["delete", "deployment.apps/shop", "service/shop"],
    ));
    expect![[r#"
        configmap "shop-config" deleted
        [exit 0]
    "#]]
    .assert_eq(&run(&s, &["delete", "-f", app, "--ignore-not-found"]));
    expect![[r#"
        [exit 0]
    "#]]
    .assert_eq(&run(&s, &["get", "deploy,svc,cm"]));
}

#[test]
fn bad_input_is_refused_whole() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = Server::start(dir.path());

    let broken_yaml = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\n---\napiVersion: v1\nkind: ConfigMap\nmetadata: [unclosed\n";
    expect![[r#"
        [stderr]
        error: STDIN: document 2 (line 7): did not find expected ',' or ']'
        [exit 1]
    "#]]
    .assert_eq(&normalize(&transcript(
        &s.skiff(&["apply", "-f", "-"], Some(broken_yaml)),
    )));

    let unknown_kind = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\n---\napiVersion: example.com/v1\nkind: Widget\nmetadata: {name: w}\n";
    expect![[r#"
        [stderr]
        error: STDIN: document 2 (line 5): no matches for kind "Widget" in version "example.com/v1"
        [exit 1]
    "#]]
    .assert_eq(&normalize(&transcript(
        &s.skiff(&["apply", "-f", "-"], Some(unknown_kind)),
    )));

    let invalid = APP
        .replace(
            "name: web\n        image",
            "name: Web_Server\n        image",
        )
        .replace("port: 80\n", "port: 80000\n");
    expect![[r#"
        [stderr]
        error: document 2 (line 11): Deployment.apps "shop" is invalid: spec.template.spec.containers[0].name: Invalid value: "Web_Server": a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')
        error: document 3 (line 42): Service "shop" is invalid: spec.ports[0].port: Invalid value: "80000": must be between 1 and 65535, inclusive
        error: 2 of 3 objects are invalid; nothing was applied
        [exit 1]
    "#]].assert_eq(&normalize(&transcript(&s.skiff(&["apply", "-f", "-"], Some(&invalid)))));

    let unknown_field = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\ndatta: {k: v}\n";
    expect![[r#"
        [stderr]
        error: document 1 (line 1): ConfigMap "a" is invalid: unknown field "datta"
        error: 1 of 1 objects are invalid; nothing was applied
        [exit 1]
    "#]]
    .assert_eq(&normalize(&transcript(
        &s.skiff(&["apply", "-f", "-"], Some(unknown_field)),
    )));

    let missing_ns = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a, namespace: nowhere}\n---\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: b}\n";
    expect![[r#"
        [stderr]
        error: document 1 (line 1): namespaces "nowhere" not found
        error: nothing was applied
        [exit 1]
    "#]]
    .assert_eq(&normalize(&transcript(
        &s.skiff(&["apply", "-f", "-"], Some(missing_ns)),
    )));

    // A namespace created by the same manifest is fine.
    let with_ns = "apiVersion: v1\nkind: Namespace\nmetadata: {name: team}\n---\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: b, namespace: team}\n";
    expect![[r#"
        namespace/team created
        configmap/b created
        [exit 0]
    "#]]
    .assert_eq(&normalize(&transcript(
        &s.skiff(&["apply", "-f", "-"], Some(with_ns)),
    )));

    // Nothing from the refused manifests landed; only the last one's did.
    expect![[r#"
        NAMESPACE   NAME   DATA   AGE
        team        b      0      0s
        [exit 0]
    "#]]
    .assert_eq(&run(&s, &["get", "cm", "-A"]));
    expect![[r#"
        [stderr]
        error: the server doesn't have a resource type "widgets"
        [exit 1]
    "#]]
    .assert_eq(&run(&s, &["get", "widgets"]));
    expect![[r#"
        [stderr]
        error: invalid value 'table' for '--output <OUTPUT>': unable to match a printer suitable for the output format "table", allowed formats are: json,name,wide,yaml

        For more information, try '--help'.
        [exit 2]
    "#]].assert_eq(&run(&s, &["get", "pods", "-o", "table"]));
    expect![[r#"
        [stderr]
        Error from server (NotFound): pods "ghost" not found
        [exit 1]
    "#]]
    .assert_eq(&run(&s, &["delete", "pod", "ghost"]));

    let down = tempfile::tempdir().expect("tempdir");
    let out = std::process::Command::new(support::SKIFF)
        .args(["--server", "127.0.0.1:1", "get", "pods"])
        .env("SKIFF_CONFIG", down.path().join("none"))
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .starts_with("The connection to the server 127.0.0.1:1 was refused")
    );
}

#[test]
fn directories_watch_and_delete_all() {
    use std::io::{BufRead, BufReader};
    let dir = tempfile::tempdir().expect("tempdir");
    let s = Server::start(dir.path());
    let manifests = dir.path().join("manifests");
    std::fs::create_dir(&manifests).expect("mkdir");
    for (file, name) in [
        ("b.yaml", "second"),
        ("a.yml", "first"),
        ("notes.txt", "ignored"),
    ] {
        let text = format!(
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: {name}, labels: {{set: demo}}}}\n"
        );
        std::fs::write(manifests.join(file), text).expect("write");
    }
    let manifests = manifests.to_str().expect("utf8");
    expect![[r#"
        configmap/first created
        configmap/second created
        [exit 0]
    "#]]
    .assert_eq(&run(&s, &["apply", "-f", manifests]));

    // `get -w` prints the current table, then a row per change.
    let mut watch = std::process::Command::new(support::SKIFF)
        .args(["--server", &s.address, "get", "cm", "-w"])
        .env("SKIFF_CONFIG", dir.path().join("none"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn watch");
    let mut lines = BufReader::new(watch.stdout.take().expect("stdout")).lines();
    let mut got = Vec::new();
    for _ in 0..3 {
        got.push(lines.next().expect("a line").expect("utf8"));
    }
    s.skiff(
        &["create", "-f", "-"],
        Some("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: third}\ndata: {k: v}\n"),
    );
    got.push(lines.next().expect("a line").expect("utf8"));
    let _ = watch.kill();
    let _ = watch.wait();
    expect![[r#"
        NAME     DATA   AGE
        first    0      0s
        second   0      0s
        third    1      0s
    "#]]
    .assert_eq(&normalize(&(got.join("\n") + "\n")));

    expect![[r#"
        configmap "first" deleted
        configmap "second" deleted
        [exit 0]
    "#]]
    .assert_eq(&run(&s, &["delete", "cm", "-l", "set=demo"]));
    expect![[r#"
        configmap "third" deleted
        [exit 0]
    "#]]
    .assert_eq(&run(&s, &["delete", "cm", "--all"]));
    expect![[r#"
        [stderr]
        No resources found in default namespace.
        [exit 0]
    "#]]
    .assert_eq(&run(&s, &["get", "cm"]));
}
