#!/usr/bin/env ruby
# Renders a BOSH job's templates the way the director does, without one,
# for tests/bosh.rs: ERB with trim mode '-', `p` (a property given in the
# manifest, else the spec's default, else p's own default, else an error),
# `if_p`, and `spec` (index, id, name, deployment, address, bootstrap).
#
#   render.rb JOB_DIR INSTANCE_JSON OUT_DIR
#
# INSTANCE_JSON: {"properties": {...the job's properties...}, "index": 0, ...}.
# Every template of the spec's `templates` map is written to OUT_DIR/<dest>.
require 'erb'
require 'fileutils'
require 'json'
require 'ostruct'
require 'yaml'

class UnknownProperty < StandardError; end

class Instance
  NOTHING = Object.new.freeze

  def initialize(job_spec, instance)
    @defaults = {}
    (job_spec['properties'] || {}).each do |name, decl|
      @defaults[name] = decl['default'] if decl.is_a?(Hash) && decl.key?('default')
    end
    @known = (job_spec['properties'] || {}).keys
    @given = instance.fetch('properties', {})
    @spec = OpenStruct.new(
      index: instance.fetch('index', 0),
      id: instance.fetch('id', 'a1b2c3d4-0000-4000-8000-000000000001'),
      name: instance.fetch('name', 'cf-audit-nozzle'),
      deployment: instance.fetch('deployment', 'cf'),
      address: instance.fetch('address', '10.0.0.10'),
      bootstrap: instance.fetch('index', 0).zero?
    )
    unknown = @given.keys - @known
    raise UnknownProperty, "properties not in the job's spec: #{unknown.join(', ')}" unless unknown.empty?
  end

  attr_reader :spec

  def lookup(name)
    return [true, @given[name]] if @given.key?(name) && !@given[name].nil?
    return [true, @defaults[name]] if @defaults.key?(name)
    [false, nil]
  end

  def p(name, default = NOTHING)
    found, value = lookup(name)
    return value if found
    return default unless default.equal?(NOTHING)
    raise UnknownProperty, "Can't find property '#{name}'"
  end

  def if_p(*names)
    values = names.map do |n|
      found, value = lookup(n)
      return self unless found
      value
    end
    yield(*values)
    self
  end

  def render(text)
    ERB.new(text, trim_mode: '-').result(binding)
  end
end

job_dir, instance_file, out_dir = ARGV
abort("usage: render.rb JOB_DIR INSTANCE_JSON OUT_DIR") unless out_dir
job_spec = YAML.safe_load(File.read(File.join(job_dir, 'spec')))
instance = Instance.new(job_spec, JSON.parse(File.read(instance_file)))
job_spec.fetch('templates').each do |source, dest|
  text = File.read(File.join(job_dir, 'templates', source))
  path = File.join(out_dir, dest)
  FileUtils.mkdir_p(File.dirname(path))
  File.write(path, instance.render(text))
end
